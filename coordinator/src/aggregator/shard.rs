//! One job's shard on an aggregator: its range of the parameters and of Adam's state, the
//! parameters as served to workers, and the fold of the current step's gradient shards.

use std::collections::HashSet;

use bytes::Bytes;
use ctcluster_common::optim::{AdamSnapshot, FlatAdam};
use ctcluster_common::reduce_tree::{Partial, TreeFold, into_mean};
use ctcluster_common::spec::AdamSpec;
use ctcluster_common::tensor_bytes::f32_to_le_bytes;

use crate::error::CoordError;

/// A shard as the coordinator installs it.
pub struct ShardInit {
    /// First parameter of the range.
    pub offset: u64,
    /// The step the parameters are at.
    pub version: u64,
    /// The range's parameters.
    pub params: Vec<f32>,
    /// The job's optimizer settings.
    pub optimizer: AdamSpec,
    /// Adam's state over the range (empty moments before the first step).
    pub adam: AdamSnapshot,
}

/// The fold of one step's gradient shards.
struct StepFold {
    leaves: u32,
    fold: TreeFold,
    /// First micro-batch of every block folded (a block pushed again is ignored).
    blocks: HashSet<u32>,
}

/// One job's shard.
pub struct Shard {
    offset: u64,
    version: u64,
    params: Vec<f32>,
    /// The parameters as little-endian bytes, what `FetchShard` streams.
    serving: Bytes,
    adam: FlatAdam,
    fold: Option<StepFold>,
}

/// What a pushed gradient shard did.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Folded into the step's tree.
    Folded,
    /// The block was already in (a re-issued task's second result), or its step is applied.
    Duplicate,
}

impl Shard {
    /// Installs a shard from the coordinator.
    pub fn new(init: ShardInit) -> Result<Shard, CoordError> {
        let n = init.params.len();
        if init.adam.time > 0 && (init.adam.moment_1.len() != n || init.adam.moment_2.len() != n) {
            return Err(CoordError::bad(
                "shard",
                format!(
                    "Adam's moments hold {} and {} values for {n} parameters",
                    init.adam.moment_1.len(),
                    init.adam.moment_2.len()
                ),
            ));
        }
        let adam = FlatAdam::restore(&init.optimizer, init.adam)?;
        Ok(Shard {
            offset: init.offset,
            version: init.version,
            serving: Bytes::from(f32_to_le_bytes(&init.params)),
            params: init.params,
            adam,
            fold: None,
        })
    }

    /// The step the parameters are at.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// First parameter of the range, and how many.
    pub fn range(&self) -> (u64, u64) {
        (self.offset, self.params.len() as u64)
    }

    /// The parameters at `version`, as little-endian bytes.
    pub fn serve(&self, version: u64) -> Result<Bytes, CoordError> {
        self.at(version)?;
        Ok(self.serving.clone())
    }

    /// The parameters and Adam's state at `version`.
    pub fn read(&self, version: u64) -> Result<(Vec<f32>, AdamSnapshot), CoordError> {
        self.at(version)?;
        Ok((self.params.clone(), self.adam.snapshot()?))
    }

    fn at(&self, version: u64) -> Result<(), CoordError> {
        if version == self.version {
            Ok(())
        } else {
            Err(CoordError::Stale(format!(
                "parameters of step {version} asked for, the shard is at step {}",
                self.version
            )))
        }
    }

    /// Folds the gradient of a task's block into the step's tree. `grad` holds the shard's
    /// range of the task's summed gradient (checked finite and of the range's length by the
    /// caller).
    pub fn push(
        &mut self,
        step: u64,
        first: u32,
        count: u32,
        leaves: u32,
        grad: Vec<f32>,
    ) -> Result<Pushed, CoordError> {
        if step < self.version {
            return Ok(Pushed::Duplicate);
        }
        if step > self.version {
            return Err(CoordError::Stale(format!(
                "a gradient of step {step}, the shard is at step {}",
                self.version
            )));
        }
        if grad.len() != self.params.len() {
            return Err(CoordError::bad(
                "gradient",
                format!("{} values for a shard of {}", grad.len(), self.params.len()),
            ));
        }
        if self.fold.is_none() {
            self.fold = Some(StepFold {
                leaves,
                fold: TreeFold::new(leaves)?,
                blocks: HashSet::new(),
            });
        }
        let Some(f) = self.fold.as_mut() else {
            return Err(CoordError::Internal("fold lost".into()));
        };
        if f.leaves != leaves {
            return Err(CoordError::bad(
                "step_leaves",
                format!(
                    "{leaves} micro-batches for step {step}, which has {}",
                    f.leaves
                ),
            ));
        }
        if f.blocks.contains(&first) {
            return Ok(Pushed::Duplicate);
        }
        let sum = Partial {
            grad,
            loss_sum: 0.0,
            samples: 0,
            correct: 0,
        };
        f.fold.push(first, count, sum)?;
        f.blocks.insert(first);
        Ok(Pushed::Folded)
    }

    /// Applies step `step` (every block of its `leaves` micro-batches folded): the mean over
    /// `batch` samples, then Adam. Applying a step already applied is a no-op (a retried call).
    pub fn apply(&mut self, step: u64, leaves: u32, batch: u32) -> Result<(), CoordError> {
        if step + 1 == self.version {
            return Ok(());
        }
        if step != self.version {
            return Err(CoordError::Stale(format!(
                "step {step} to apply, the shard is at step {}",
                self.version
            )));
        }
        let Some(f) = self.fold.as_ref() else {
            return Err(CoordError::Stale(format!(
                "no gradient of step {step} has been pushed"
            )));
        };
        if f.leaves != leaves {
            return Err(CoordError::bad(
                "leaves",
                format!("{leaves} micro-batches, the pushed blocks say {}", f.leaves),
            ));
        }
        if !f.fold.is_complete() {
            // Nothing is consumed: the missing blocks may still come.
            return Err(CoordError::Stale(format!(
                "step {step}: {} of {leaves} micro-batches have not been pushed",
                f.fold.missing()
            )));
        }
        let fold = self
            .fold
            .take()
            .ok_or_else(|| CoordError::Internal("fold lost".into()))?;
        let sum = fold.fold.finish()?;
        let mean = into_mean(sum.grad, batch.max(1));
        self.adam.step_in_place(&mut self.params, &mean)?;
        self.version += 1;
        self.serving = Bytes::from(f32_to_le_bytes(&self.params));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use ctcluster_common::reduce_tree::tree_sum;

    use super::*;

    fn spec() -> AdamSpec {
        serde_json::from_str(r#"{"lr": 0.01}"#).unwrap()
    }

    fn grads(step: u64, leaves: u32, n: usize) -> Vec<Vec<f32>> {
        (0..leaves)
            .map(|l| {
                (0..n)
                    .map(|i| ((i as f32 + 1.3) * (l as f32 - 2.1) * (step as f32 + 0.7)).sin())
                    .collect()
            })
            .collect()
    }

    /// Three steps of five micro-batches over a 40-parameter vector, by the coordinator's
    /// arithmetic on the whole vector and by three shards fed blocks out of order with
    /// duplicates: the same bits, parameters and Adam state.
    #[test]
    fn shards_step_to_the_same_bits_as_the_whole_vector() {
        let n = 40;
        let init: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).cos()).collect();
        let mut whole = FlatAdam::new(&spec());
        let mut params = init.clone();
        let ranges = ctcluster_common::shards::shard_ranges(n as u64, 3);
        let mut shards: Vec<Shard> = ranges
            .iter()
            .map(|r| {
                Shard::new(ShardInit {
                    offset: r.start,
                    version: 0,
                    params: init[r.start as usize..r.end as usize].to_vec(),
                    optimizer: spec(),
                    adam: FlatAdam::new(&spec()).snapshot().unwrap(),
                })
                .unwrap()
            })
            .collect();
        for step in 0..3u64 {
            let g = grads(step, 5, n);
            let leaves: Vec<Partial> = g
                .iter()
                .map(|g| Partial {
                    grad: g.clone(),
                    loss_sum: 0.0,
                    samples: 0,
                    correct: 0,
                })
                .collect();
            let sum = tree_sum(leaves).unwrap();
            params = whole.step(params, into_mean(sum.grad, 50)).unwrap();
            for (shard, r) in shards.iter_mut().zip(&ranges) {
                let part = |l: usize| g[l][r.start as usize..r.end as usize].to_vec();
                let pair: Vec<f32> = part(2).iter().zip(part(3)).map(|(a, b)| a + b).collect();
                // Blocks [4], [2, 3] (summed by a worker) and [0], [1]; [4] twice.
                assert_eq!(shard.push(step, 4, 1, 5, part(4)).unwrap(), Pushed::Folded);
                assert_eq!(shard.push(step, 2, 2, 5, pair).unwrap(), Pushed::Folded);
                assert_eq!(
                    shard.push(step, 4, 1, 5, part(4)).unwrap(),
                    Pushed::Duplicate
                );
                shard.push(step, 0, 1, 5, part(0)).unwrap();
                assert!(
                    shard.apply(step, 5, 50).is_err(),
                    "micro-batch 1 is missing"
                );
                // The failed apply consumed nothing: the missing block comes, then it applies.
                shard
                    .push(step, 1, 1, 5, part(1))
                    .unwrap_or_else(|e| panic!("{e}"));
                shard.apply(step, 5, 50).unwrap();
                shard
                    .apply(step, 5, 50)
                    .expect("a retried apply is a no-op");
                assert_eq!(shard.version(), step + 1);
            }
        }
        let joined: Vec<f32> = shards.iter().flat_map(|s| s.read(3).unwrap().0).collect();
        assert_eq!(
            joined, params,
            "sharded parameters differ from the whole vector's"
        );
        let whole_state = whole.snapshot().unwrap();
        let m1: Vec<f32> = shards
            .iter()
            .flat_map(|s| s.read(3).unwrap().1.moment_1)
            .collect();
        assert_eq!(m1, whole_state.moment_1);
        assert!(shards[0].serve(2).is_err(), "old parameters are not served");
        assert!(matches!(
            shards[0].push(9, 0, 1, 5, vec![0.0; 14]),
            Err(CoordError::Stale(_))
        ));
        assert!(matches!(
            shards[0].push(3, 0, 1, 5, vec![0.0; 3]),
            Err(CoordError::BadRequest { .. })
        ));
    }
}
