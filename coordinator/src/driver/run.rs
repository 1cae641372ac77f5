//! The job loop: plan, rounds of tasks, reduce and Adam, evaluation at epoch ends,
//! checkpoints, and how the job ended.

use std::sync::Arc;
use std::time::Instant;

use ctcluster_common::checkpoint::{ModelCard, export_model};
use ctcluster_common::dataset::load_manifest;
use ctcluster_common::job::{EpochMetrics, JobState};
use ctcluster_common::model::ModelConfig;
use ctcluster_common::storage::StoreUrl;
use ctcluster_common::{Error, Step};
use ctcluster_proto as pb;

use crate::error::CoordError;
use crate::job::JobHandle;
use crate::records;
use crate::state::Coordinator;

use super::pace::{RateMeter, wait_for_workers};
use super::persist::{checkpoint, write_audit};
use super::rounds::{evaluate, reduce_and_step, run_round, task_job};
use super::start::{plan_for, start_point};

pub(super) enum Stop {
    Cancelled,
    Shutdown,
    Failed(CoordError),
}

impl<E: Into<CoordError>> From<E> for Stop {
    fn from(e: E) -> Self {
        Stop::Failed(e.into())
    }
}

/// Runs a job to its end and records how it ended.
pub async fn run(coord: Arc<Coordinator>, job: Arc<JobHandle>) {
    let outcome = tokio::select! {
        r = train(&coord, &job) => r,
        _ = job.cancel.cancelled() => Err(Stop::Cancelled),
        _ = coord.shutdown.cancelled() => Err(Stop::Shutdown),
    };
    coord.scheduler.forget_job(&job.id);
    match outcome {
        Ok(()) => job.update(|r| {
            r.state = JobState::Succeeded;
            r.eta_seconds = 0.0;
        }),
        Err(Stop::Cancelled) => job.update(|r| {
            r.state = JobState::Cancelled;
            r.message = "cancelled by the user".into();
        }),
        Err(Stop::Shutdown) => {
            tracing::info!(job = %job.id, "coordinator stopping; job left to resume on restart");
            return;
        }
        Err(Stop::Failed(e)) => {
            tracing::error!(job = %job.id, error = %e, "job failed");
            job.update(|r| {
                r.state = JobState::Failed;
                r.message = e.to_string();
            });
        }
    }
    let record = job.record();
    tracing::info!(job = %job.id, state = record.state.as_str(), "job ended");
    if let Err(e) = records::save(&coord.config.state_url, &record).await {
        tracing::error!(job = %job.id, error = %e, "could not write the job record");
    }
}

async fn train(coord: &Arc<Coordinator>, job: &Arc<JobHandle>) -> Result<(), Stop> {
    let spec = &job.spec;
    job.update(|r| r.state = JobState::Running);
    records::save(&coord.config.state_url, &job.record()).await?;

    let dataset = StoreUrl::parse(&spec.dataset)?;
    let manifest = load_manifest(&dataset).await?;
    let plan = plan_for(spec, &dataset, &manifest).await?;
    if plan.train.samples.is_empty() {
        return Err(Error::invalid(
            "dataset",
            "no training samples after the validation hold-out",
        )
        .into());
    }
    let stats = manifest.pixel_stats;
    let model = ModelConfig::seed_cnn(
        &manifest.image,
        manifest.classes.len(),
        spec.model.dropout,
        stats.mean as f32,
        if stats.std > 0.0 {
            stats.std as f32
        } else {
            1.0
        },
    )?;
    let model_json = serde_json::to_string(&model).map_err(|e| Error::Compute(e.to_string()))?;
    let job_output = StoreUrl::parse(&spec.output)?.join(job.id.as_str())?;
    let mut p = start_point(job, &model, &job_output).await?;
    records::save(&coord.config.state_url, &job.record()).await?;

    let spe = plan.steps_per_epoch(spec.batch_size);
    let all_steps = spe * u64::from(spec.epochs);
    let total_steps = spec.max_steps.map_or(all_steps, |m| m.min(all_steps));
    tracing::info!(
        job = %job.id, train = plan.train.samples.len(), val = plan.val.samples.len(),
        steps_per_epoch = spe, total_steps, params = p.params.len(), "job planned"
    );
    job.update(|r| r.total_steps = total_steps);
    job.publish_params(p.state.step.0, &p.params);
    let mut rate = RateMeter::default();
    let mut last_checkpoint = None;

    'epochs: while p.state.epoch < spec.epochs {
        let epoch = p.state.epoch;
        let order = plan.epoch_order(spec.seed, epoch);
        while p.state.step_in_epoch < spe {
            if p.state.step.0 >= total_steps {
                break 'epochs;
            }
            wait_for_workers(coord, job).await;
            let started = Instant::now();
            let step = p.state.step.0;
            let tasks: Vec<pb::Task> = plan
                .micro_batches(&order, p.state.step_in_epoch, spec)
                .into_iter()
                .map(|samples| pb::Task {
                    kind: pb::TaskKind::Train as i32,
                    job: Some(task_job(job, &model_json, &plan.train.split)),
                    epoch,
                    step,
                    params_version: step,
                    num_params: p.params.len() as u64,
                    samples,
                    ..Default::default()
                })
                .collect();
            let audited: Option<Vec<[u32; 2]>> = spec.audit.then(|| {
                tasks
                    .iter()
                    .flat_map(|t| t.samples.iter().map(|s| [s.shard, s.row]))
                    .collect()
            });
            let results = run_round(coord, job, tasks).await?;
            let samples: u64 = results.iter().map(|r| u64::from(r.samples)).sum();
            let loss: f64 = results.iter().map(|r| r.loss_sum).sum();
            let batch = u32::try_from(samples).map_err(|_| Error::invalid("batch", "too large"))?;
            p = reduce_and_step(p, results, batch).await?;
            p.state.step = Step(step + 1);
            p.state.step_in_epoch += 1;
            p.state.epoch_loss_sum += loss;
            p.state.epoch_samples += samples;
            job.publish_params(p.state.step.0, &p.params);
            if let Some(samples) = audited {
                write_audit(&job_output, epoch, step, plan.train.samples.len(), samples).await?;
            }
            let ips = rate.record(samples, started.elapsed().as_secs_f64());
            let workers = coord.workers.count() as u32;
            job.update(|r| {
                r.step = p.state.step.0;
                r.epoch = epoch;
                r.metrics.train_loss =
                    Some(p.state.epoch_loss_sum / p.state.epoch_samples.max(1) as f64);
                r.images_per_sec = ips;
                r.eta_seconds = rate.eta(total_steps.saturating_sub(p.state.step.0));
                r.workers = workers;
            });
            if p.state.step.0 % spec.checkpoint.every_steps == 0 {
                checkpoint(job, &p, &job_output).await?;
                last_checkpoint = Some(p.state.step);
            }
        }
        // The epoch is complete: evaluate, then move the cursor to the next epoch.
        let val = evaluate(coord, job, &plan.val, &model_json, &p).await?;
        let train_loss = p.state.epoch_loss_sum / p.state.epoch_samples.max(1) as f64;
        job.update(|r| {
            r.metrics.train_loss = Some(train_loss);
            if let Some((loss, acc)) = val {
                r.metrics.val_loss = Some(loss);
                r.metrics.val_accuracy = Some(acc);
            }
            let metrics = r.metrics;
            r.history.push(EpochMetrics {
                epoch,
                step: p.state.step.0,
                metrics,
            });
        });
        if let Some((loss, acc)) = val {
            tracing::info!(job = %job.id, epoch, train_loss, val_loss = loss, val_accuracy = acc, "epoch done");
        }
        p.state.epoch += 1;
        p.state.step_in_epoch = 0;
        p.state.epoch_loss_sum = 0.0;
        p.state.epoch_samples = 0;
        records::save(&coord.config.state_url, &job.record()).await?;
    }
    if last_checkpoint != Some(p.state.step) {
        checkpoint(job, &p, &job_output).await?;
    }
    let card = ModelCard {
        model: model.clone(),
        classes: manifest.classes.clone(),
        job_id: job.id.to_string(),
        step: p.state.step,
    };
    let url = export_model(&job_output, &card, &p.params).await?;
    job.update(|r| r.model = Some(url.to_string()));
    Ok(())
}
