//! The data plan: which samples are validation (by id), the order of each epoch (from the seed
//! and the epoch), and how a step's global batch is cut into micro-batches.

use ctcluster_common::dataset::Manifest;
use ctcluster_common::rng::{KeyedRng, derive, hash_str};
use ctcluster_common::spec::JobSpec;
use ctcluster_common::task::SampleRef;

/// Which split a task reads.
#[derive(Clone, Debug, PartialEq)]
pub struct SplitRefs {
    /// Split name in the dataset.
    pub split: String,
    /// Samples, in dataset order.
    pub samples: Vec<SampleRef>,
}

impl SplitRefs {
    /// Every row of a split, in dataset order (none when the dataset lacks it).
    pub fn whole(manifest: &Manifest, split: &str) -> SplitRefs {
        SplitRefs {
            split: split.to_string(),
            samples: all_refs(manifest, split),
        }
    }
}

/// A job's data plan.
#[derive(Clone, Debug)]
pub struct DataPlan {
    /// Training samples, in dataset order.
    pub train: SplitRefs,
    /// Validation samples, in dataset order.
    pub val: SplitRefs,
    /// The dataset's `test` split, where it has one (and validation is another split): the
    /// exported model is evaluated on it for its card.
    pub test: Option<SplitRefs>,
}

/// The split of the dataset the exported model is tested on, when present.
pub const TEST_SPLIT: &str = "test";

/// Whether a sample id falls in the held-out fraction: a function of the id alone.
pub fn is_validation(id: &str, fraction: f64) -> bool {
    (hash_str(id) >> 11) as f64 / (1u64 << 53) as f64 <= fraction && fraction > 0.0
}

fn all_refs(manifest: &Manifest, split: &str) -> Vec<SampleRef> {
    let mut out = Vec::new();
    if let Some(s) = manifest.splits.get(split) {
        for (shard, info) in s.shards.iter().enumerate() {
            for row in 0..info.rows {
                out.push(SampleRef {
                    shard: shard as u32,
                    row: row as u32,
                });
            }
        }
    }
    out
}

impl DataPlan {
    /// A plan where validation is a whole split of the dataset.
    pub fn with_split(manifest: &Manifest, val_split: &str) -> DataPlan {
        DataPlan {
            train: SplitRefs {
                split: "train".into(),
                samples: all_refs(manifest, "train"),
            },
            val: SplitRefs {
                split: val_split.into(),
                samples: all_refs(manifest, val_split),
            },
            test: None,
        }
    }

    /// The plan with the dataset's `test` split (unless validation uses it).
    pub fn with_test(mut self, manifest: &Manifest) -> DataPlan {
        if self.val.split != TEST_SPLIT && manifest.splits.contains_key(TEST_SPLIT) {
            self.test = Some(SplitRefs::whole(manifest, TEST_SPLIT));
        }
        self
    }

    /// A plan holding out `fraction` of the train split by sample id; `ids[shard][row]`.
    pub fn by_id(ids: &[Vec<String>], fraction: f64) -> DataPlan {
        let mut train = Vec::new();
        let mut val = Vec::new();
        for (shard, rows) in ids.iter().enumerate() {
            for (row, id) in rows.iter().enumerate() {
                let r = SampleRef {
                    shard: shard as u32,
                    row: row as u32,
                };
                if is_validation(id, fraction) {
                    val.push(r);
                } else {
                    train.push(r);
                }
            }
        }
        DataPlan {
            train: SplitRefs {
                split: "train".into(),
                samples: train,
            },
            val: SplitRefs {
                split: "train".into(),
                samples: val,
            },
            test: None,
        }
    }

    /// Steps in one epoch (the last batch may be short: every sample is seen once).
    pub fn steps_per_epoch(&self, batch: u32) -> u64 {
        (self.train.samples.len() as u64).div_ceil(u64::from(batch))
    }

    /// The epoch's visiting order (indices into `train.samples`).
    pub fn epoch_order(&self, seed: u64, epoch: u32) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.train.samples.len()).collect();
        KeyedRng::new(derive(&[seed, 0xE90C, u64::from(epoch)])).shuffle(&mut order);
        order
    }

    /// The micro-batches of one step: slices of the epoch order, `micro` samples each.
    pub fn micro_batches(
        &self,
        order: &[usize],
        step_in_epoch: u64,
        spec: &JobSpec,
    ) -> Vec<Vec<SampleRef>> {
        let b = spec.batch_size as usize;
        let start = (step_in_epoch as usize).saturating_mul(b).min(order.len());
        let end = (start + b).min(order.len());
        order[start..end]
            .chunks(spec.micro_batch_size as usize)
            .map(|c| c.iter().map(|&i| self.train.samples[i]).collect())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(batch: u32, micro: u32) -> JobSpec {
        let mut s =
            JobSpec::from_yaml("name: t\ndataset: memory://a/b\noutput: memory://a/c\n").unwrap();
        s.batch_size = batch;
        s.micro_batch_size = micro;
        s
    }

    #[test]
    fn every_sample_once_per_epoch_and_validation_is_fixed_by_id() {
        let ids: Vec<Vec<String>> = (0..3)
            .map(|s| (0..100).map(|r| format!("s{s}-r{r}")).collect())
            .collect();
        let plan = DataPlan::by_id(&ids, 0.2);
        let n_val = plan.val.samples.len();
        assert!((40..80).contains(&n_val), "{n_val}");
        assert_eq!(plan.train.samples.len() + n_val, 300);
        // The same ids in another shard order give the same validation ids.
        let mut reordered = ids.clone();
        reordered.reverse();
        let ids_of = |p: &DataPlan, ids: &[Vec<String>]| {
            let mut v: Vec<String> = p
                .val
                .samples
                .iter()
                .map(|r| ids[r.shard as usize][r.row as usize].clone())
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            ids_of(&plan, &ids),
            ids_of(&DataPlan::by_id(&reordered, 0.2), &reordered)
        );

        let s = spec(64, 16);
        let order = plan.epoch_order(1, 0);
        assert_ne!(order, plan.epoch_order(1, 1));
        let mut seen: Vec<SampleRef> = Vec::new();
        for step in 0..plan.steps_per_epoch(64) {
            let mbs = plan.micro_batches(&order, step, &s);
            assert!(mbs.iter().all(|m| m.len() <= 16));
            seen.extend(mbs.into_iter().flatten());
        }
        let mut got: Vec<(u32, u32)> = seen.iter().map(|r| (r.shard, r.row)).collect();
        let mut want: Vec<(u32, u32)> = plan
            .train
            .samples
            .iter()
            .map(|r| (r.shard, r.row))
            .collect();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want);
    }
}
