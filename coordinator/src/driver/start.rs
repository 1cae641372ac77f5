//! Where a job starts: its data plan, and fresh parameters or a checkpoint to resume from.

use ctcluster_common::checkpoint::{Checkpoint, TrainingState, list_complete};
use ctcluster_common::dataset::{Manifest, load_shard};
use ctcluster_common::model::ModelConfig;
use ctcluster_common::optim::FlatAdam;
use ctcluster_common::spec::JobSpec;
use ctcluster_common::storage::StoreUrl;
use ctcluster_common::{Error, Step};

use crate::job::JobHandle;
use crate::plan::DataPlan;

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
    if let Some(split) = &spec.validation.split {
        manifest.split(split, dataset.as_str())?;
        return Ok(DataPlan::with_split(manifest, split));
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
    Ok(DataPlan::by_id(&ids, spec.validation.fraction))
}

fn compatible(spec: &JobSpec, old: &JobSpec) -> Result<(), Error> {
    let same = |field: &str, a: String, b: String| {
        if a == b {
            Ok(())
        } else {
            Err(Error::invalid(
                "resume_from",
                format!("the checkpoint was trained with {field} {b}, this job says {a}"),
            ))
        }
    };
    same("dataset", spec.dataset.clone(), old.dataset.clone())?;
    same(
        "batch_size",
        spec.batch_size.to_string(),
        old.batch_size.to_string(),
    )?;
    same(
        "micro_batch_size",
        spec.micro_batch_size.to_string(),
        old.micro_batch_size.to_string(),
    )?;
    same("seed", spec.seed.to_string(), old.seed.to_string())?;
    same(
        "validation",
        format!("{:?}", spec.validation),
        format!("{:?}", old.validation),
    )?;
    Ok(())
}

/// The newest checkpoint that loads; broken ones are skipped with a warning naming them, which
/// also goes into the job's status message.
async fn newest_checkpoint(
    job: &JobHandle,
    job_output: &StoreUrl,
) -> Result<Option<(Checkpoint, StoreUrl)>, Error> {
    for dir in list_complete(job_output).await?.into_iter().rev() {
        match Checkpoint::load(&dir).await {
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
    let resumed = match newest_checkpoint(job, job_output).await? {
        Some(found) => Some(found),
        None => match &spec.resume_from {
            Some(url) => {
                let dir = StoreUrl::parse(url)?;
                Some((Checkpoint::load(&dir).await?, dir))
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
            },
        });
    };
    compatible(spec, &ck.spec()?)?;
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
    Ok(Progress {
        params: ck.params,
        adam: FlatAdam::restore(&spec.optimizer, ck.adam)?,
        state,
    })
}
