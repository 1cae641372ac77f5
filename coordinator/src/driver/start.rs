//! Where a job starts: its data plan, and fresh parameters or a checkpoint to resume from.

use ctcluster_common::checkpoint::{Checkpoint, TrainingState, list_complete};
use ctcluster_common::dataset::{Manifest, load_shard, verify_shard_sizes};
use ctcluster_common::model::ModelConfig;
use ctcluster_common::optim::FlatAdam;
use ctcluster_common::spec::JobSpec;
use ctcluster_common::storage::StoreUrl;
use ctcluster_common::{Error, Step};

use crate::access::check_sealing;
use crate::job::JobHandle;
use crate::plan::{DataPlan, TEST_SPLIT};

use super::run::Stop;

pub(super) struct Progress {
    pub(super) params: Vec<f32>,
    pub(super) adam: FlatAdam,
    pub(super) state: TrainingState,
}

pub(super) async fn plan_for(
    spec: &JobSpec,
    dataset: &StoreUrl,
    manifest: &Manifest,
) -> Result<DataPlan, Stop> {
    // The plan holds a reference per row the manifest declares: the counts must first be
    // borne out by the files (checked at submit, and again here: data can change, and a
    // restarted coordinator plans from storage).
    verify_shard_sizes(dataset, manifest, "train").await?;
    if manifest.splits.contains_key(TEST_SPLIT) {
        verify_shard_sizes(dataset, manifest, TEST_SPLIT).await?;
    }
    if let Some(split) = &spec.validation.split {
        verify_shard_sizes(dataset, manifest, split).await?;
        return Ok(DataPlan::with_split(manifest, split).with_test(manifest));
    }
    let shards = manifest.split("train", dataset.as_str())?.shards.len();
    let mut ids = Vec::with_capacity(shards);
    if spec.validation.fraction > 0.0 {
        for shard in 0..shards {
            ids.push(load_shard(dataset, manifest, "train", shard).await?.ids);
        }
    } else {
        let train = &manifest.splits["train"];
        ids = train
            .shards
            .iter()
            .map(|s| vec![String::new(); s.rows as usize])
            .collect();
    }
    Ok(DataPlan::by_id(&ids, spec.validation.fraction).with_test(manifest))
}

/// A checkpoint resumes only a job that plans the same batches: the same data, batch cut,
/// seed and validation hold-out. Compared field by field, by value.
fn compatible(spec: &JobSpec, old: &JobSpec) -> Result<(), Error> {
    fn same<T: PartialEq + std::fmt::Debug>(field: &str, new: &T, old: &T) -> Result<(), Error> {
        if new == old {
            Ok(())
        } else {
            Err(Error::invalid(
                "resume_from",
                format!("the checkpoint was trained with {field} {old:?}, this job says {new:?}"),
            ))
        }
    }
    same("dataset", &spec.dataset, &old.dataset)?;
    same("batch_size", &spec.batch_size, &old.batch_size)?;
    same(
        "micro_batch_size",
        &spec.micro_batch_size,
        &old.micro_batch_size,
    )?;
    same("seed", &spec.seed, &old.seed)?;
    same("validation", &spec.validation, &old.validation)?;
    Ok(())
}

/// The newest checkpoint that loads; broken ones are skipped with a warning naming them, which
/// also goes into the job's status message.
async fn newest_checkpoint(
    job: &JobHandle,
    job_output: &StoreUrl,
    num_params: usize,
) -> Result<Option<(Checkpoint, StoreUrl)>, Error> {
    for dir in list_complete(job_output).await?.into_iter().rev() {
        let loaded = Checkpoint::load_limited(&dir, num_params)
            .await
            .and_then(|c| match check_sealing(&job.spec, &c) {
                Ok(()) => Ok(c),
                Err(why) => Err(Error::checkpoint(dir.as_str(), why)),
            });
        match loaded {
            Ok(c) => return Ok(Some((c, dir))),
            Err(e) => {
                tracing::warn!(job = %job.id, error = %e, "skipping a bad checkpoint");
                job.update(|r| r.message = format!("skipped a bad checkpoint: {e}"));
            }
        }
    }
    Ok(None)
}

pub(super) async fn start_point(
    job: &JobHandle,
    model: &ModelConfig,
    job_output: &StoreUrl,
) -> Result<Progress, Stop> {
    let spec = &job.spec;
    let resumed = match newest_checkpoint(job, job_output, model.num_params()).await? {
        Some(found) => Some(found),
        None => match &spec.resume_from {
            Some(url) => {
                let dir = StoreUrl::parse(url)?;
                let ck = Checkpoint::load_limited(&dir, model.num_params()).await?;
                check_sealing(spec, &ck).map_err(|e| Error::invalid("resume_from", e))?;
                Some((ck, dir))
            }
            None => None,
        },
    };
    let Some((ck, dir)) = resumed else {
        return Ok(Progress {
            params: model.init_params(spec.seed),
            adam: FlatAdam::new(&spec.optimizer),
            state: TrainingState {
                step: Step(0),
                epoch: 0,
                step_in_epoch: 0,
                epoch_loss_sum: 0.0,
                epoch_samples: 0,
                epoch_correct: 0,
                spec_yaml: spec.to_yaml(),
                model: model.clone(),
                adam_time: 0,
                best: None,
            },
        });
    };
    let old_spec = ck.spec()?;
    compatible(spec, &old_spec)?;
    if &ck.state.model != model {
        return Err(Error::invalid(
            "resume_from",
            "the checkpoint is of another model or input shape",
        )
        .into());
    }
    tracing::info!(job = %job.id, checkpoint = %dir, step = ck.state.step.0, "resuming from checkpoint");
    job.update(|r| {
        r.checkpoint = Some(dir.to_string());
        r.resumes += 1;
        r.resumed_from_step = Some(ck.state.step.0);
        r.step = ck.state.step.0;
        r.epoch = ck.state.epoch;
    });
    let mut state = ck.state;
    state.spec_yaml = spec.to_yaml();
    // The best epoch was judged by the old spec's metric: another metric judges afresh.
    let metric = |s: &JobSpec| s.selection.as_ref().map(|s| s.metric);
    if metric(&old_spec) != metric(spec) {
        state.best = None;
    }
    Ok(Progress {
        params: ck.params,
        adam: FlatAdam::restore(&spec.optimizer, ck.adam)?,
        state,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ctcluster_common::checkpoint::sha;
    use ctcluster_common::dataset::{
        ImageInfo, PixelStats, PixelType, ShardInfo, SplitInfo, encode_shard, load_manifest,
    };
    use ctcluster_common::rng::KeyedRng;

    use super::*;

    #[test]
    fn a_checkpoint_resumes_only_a_job_that_plans_the_same_batches() {
        let base = "name: t\ndataset: memory://d/x\noutput: memory://d/out\n";
        let old = JobSpec::from_yaml(base).unwrap();
        let more_epochs = JobSpec::from_yaml(&format!("{base}epochs: 9\n")).unwrap();
        compatible(&more_epochs, &old).expect("epochs may change");
        let held_out =
            JobSpec::from_yaml(&format!("{base}validation:\n  fraction: 0.2\n")).unwrap();
        let err = compatible(&held_out, &old).unwrap_err().to_string();
        assert!(err.contains("validation") && err.contains("0.2"), "{err}");
        let reseeded = JobSpec::from_yaml(&format!("{base}seed: 8\n")).unwrap();
        assert!(
            compatible(&reseeded, &old)
                .unwrap_err()
                .to_string()
                .contains("seed")
        );
    }

    /// A count as a forger might write it: honest, a little off, or absurd.
    fn forged(rng: &mut KeyedRng, honest: u64) -> u64 {
        match rng.below(6) {
            0 | 1 => honest,
            2 => honest + 1 + rng.below(3) as u64,
            3 => rng.next_u64(),
            4 => u64::from(u32::MAX) + rng.below(2) as u64,
            _ => 1 << (20 + rng.below(30)),
        }
    }

    /// Manifests with random (often forged) row counts over real shard files: planning either
    /// succeeds with exactly the rows the files hold, or fails with an error naming the
    /// dataset. It never panics and never allocates for rows that are not there.
    #[tokio::test]
    async fn the_planner_never_believes_forged_counts() {
        let mut rng = KeyedRng::new(0x5eed);
        let image = ImageInfo {
            height: 4,
            width: 4,
            channels: 1,
            pixel_type: PixelType::U8,
        };
        let (mut planned, mut refused) = (0, 0);
        for trial in 0..200 {
            let root = StoreUrl::parse(&format!("memory://plan-prop/t{trial}")).unwrap();
            let mut splits = BTreeMap::new();
            let mut honest_rows = BTreeMap::new();
            let mut room = BTreeMap::new();
            for split in ["train", "val"] {
                let mut shards = Vec::new();
                let (mut real, mut space) = (0u64, 0u64);
                for s in 0..=rng.below(3) {
                    let rows = rng.below(40);
                    let ids: Vec<String> = (0..rows).map(|r| format!("{split}-{s}-{r}")).collect();
                    let labels: Vec<i32> = (0..rows).map(|r| (r % 2) as i32).collect();
                    let images = vec![vec![9u8; image.bytes()]; rows];
                    let bytes = encode_shard(&ids, &labels, &images).unwrap();
                    let file = format!("{split}-{s:05}.arrow");
                    root.join(&file).unwrap().put(bytes.clone()).await.unwrap();
                    let declared = forged(&mut rng, rows as u64);
                    let a = declared / 2;
                    shards.push(ShardInfo {
                        file,
                        rows: declared,
                        sha256: sha(&bytes),
                        per_class: vec![a, declared - a],
                    });
                    real += rows as u64;
                    space += bytes.len() as u64;
                }
                let total = shards
                    .iter()
                    .map(|s| s.rows)
                    .fold(0u64, u64::saturating_add);
                let rows = if rng.below(4) == 0 {
                    forged(&mut rng, total)
                } else {
                    total
                };
                let per_class = vec![rows / 2, rows - rows / 2];
                splits.insert(
                    split.to_string(),
                    SplitInfo {
                        rows,
                        per_class,
                        shards,
                    },
                );
                honest_rows.insert(split, real);
                room.insert(split, space / image.bytes() as u64);
            }
            let manifest = Manifest {
                format: "ctcluster.dataset.v1".into(),
                image,
                classes: vec!["a".into(), "b".into()],
                splits,
                pixel_stats: PixelStats {
                    mean: 9.0,
                    std: 1.0,
                    min: 0.0,
                    max: 255.0,
                },
                schema: ctcluster_common::dataset::shard_columns(),
                source: String::new(),
                encryption: None,
                deidentification: None,
            };
            root.join("manifest.json")
                .unwrap()
                .put(serde_json::to_vec(&manifest).unwrap())
                .await
                .unwrap();
            let mut spec = JobSpec::from_yaml(&format!(
                "name: p\ndataset: {root}\noutput: memory://plan-prop/out\n"
            ))
            .unwrap();
            match rng.below(3) {
                0 => spec.validation.fraction = 0.0,
                1 => spec.validation.split = Some("val".into()),
                _ => {}
            }
            let loaded = match load_manifest(&root).await {
                Ok(m) => m,
                Err(e) => {
                    assert!(e.to_string().contains(root.as_str()), "{e}");
                    refused += 1;
                    continue;
                }
            };
            match plan_for(&spec, &root, &loaded).await {
                Ok(plan) => {
                    planned += 1;
                    // With a validation fraction, the held-out samples come out of train.
                    let n = (plan.train.samples.len() + plan.val.samples.len()) as u64;
                    let used: &[&str] = if spec.validation.split.is_some() {
                        &["train", "val"]
                    } else {
                        &["train"]
                    };
                    // Never more references than the files have room for...
                    assert!(
                        n <= used.iter().map(|s| room[*s]).sum::<u64>(),
                        "trial {trial}: planned {n} rows the files cannot hold"
                    );
                    // ...and exactly the rows there when the plan read the shards' ids.
                    if spec.validation.split.is_none() && spec.validation.fraction > 0.0 {
                        assert_eq!(n, honest_rows["train"], "trial {trial}");
                    }
                }
                Err(Stop::Failed(e)) => {
                    refused += 1;
                    assert!(e.to_string().contains("plan-prop"), "{e}");
                }
                Err(_) => panic!("unexpected stop"),
            }
        }
        assert!(
            planned > 10 && refused > 10,
            "{planned} planned, {refused} refused"
        );
    }
}
