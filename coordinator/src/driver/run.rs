//! The job loop: plan, rounds of tasks, reduce and Adam, evaluation at epoch ends,
//! checkpoints, and how the job ended.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use futures::FutureExt;

use tracing::field::Empty;
use tracing::{Instrument, Span};

use ctcluster_common::audit::StepAudit;
use ctcluster_common::dataset::load_manifest_with_sha;
use ctcluster_common::job::{EpochMetrics, JobState};
use ctcluster_common::model::model_for_job;
use ctcluster_common::shards::ShardRoute;
use ctcluster_common::storage::StoreUrl;
use ctcluster_common::task::{Task, TaskKind, TreeBlock};
use ctcluster_common::telemetry::{carrier_of, child_of_carrier};
use ctcluster_common::{Error, Step, TaskId, trace_span};

use crate::error::CoordError;
use crate::job::JobHandle;
use crate::records;
use crate::scheduler::RoundTrace;
use crate::state::Coordinator;

use super::export::{Finish, Provenance, finish, judge_epoch, stopped_early};
use super::pace::{RateMeter, wait_for_workers};
use super::persist::checkpoint;
use super::rounds::{Block, EvalAt, evaluate, reduce_and_step, run_train_round, task_job};
use super::shards::{Shards, drop_shards, sync};
use super::start::{Progress, plan_for, start_point};

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

/// How long a job whose aggregator was lost waits before it resumes.
const AGGREGATOR_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs a job to its end and records how it ended.
pub async fn run(coord: Arc<Coordinator>, job: Arc<JobHandle>) {
    let record = job.record();
    // The job's span joins the trace of the `ctctl submit` that created it (also when this
    // coordinator resumes the job after a restart).
    let span = trace_span!(
        "job",
        job.id = %job.id,
        job.name = %job.spec.name,
        resumes = record.resumes,
        state = Empty,
    );
    child_of_carrier(&span, &record.trace_context);
    let outcome = loop {
        // A panic anywhere in the job's driver fails that job (with the panic's message), never
        // the coordinator or its other jobs.
        let training =
            AssertUnwindSafe(train(&coord, &job).instrument(span.clone())).catch_unwind();
        // A stopping coordinator is not raced here: the driver sees it where it waits (a round,
        // workers), checkpoints the step it completed last and ends with `Stop::Shutdown`.
        let outcome = tokio::select! {
            r = training => r.unwrap_or_else(|panic| Err(Stop::Failed(CoordError::Internal(
                format!("the job's driver panicked: {}", panic_message(panic.as_ref()))
            )))),
            _ = job.cancel.cancelled() => Err(Stop::Cancelled),
        };
        coord.scheduler.forget_job(&job.id);
        // A lost aggregator costs the steps since the newest checkpoint, never the job: it
        // starts again from there (the same bits) once the aggregators answer.
        let Err(Stop::Failed(CoordError::AggregatorLost(why))) = &outcome else {
            break outcome;
        };
        span.in_scope(|| tracing::warn!(job = %job.id, error = %why, "aggregator lost; resuming from the newest checkpoint"));
        job.update(|r| {
            r.message = format!("{why}; resuming from the newest checkpoint");
            r.unfinished_starts = 0;
        });
        tokio::select! {
            () = tokio::time::sleep(AGGREGATOR_RETRY) => {}
            () = coord.shutdown.cancelled() => break Err(Stop::Shutdown),
            () = job.cancel.cancelled() => break Err(Stop::Cancelled),
        }
    };
    if !matches!(outcome, Err(Stop::Shutdown)) {
        let k = (job.spec.aggregators as usize).min(coord.config.aggregators.len());
        drop_shards(
            &job.id,
            &coord.config.aggregators[..k],
            coord.config.tls.as_ref(),
        )
        .await;
    }
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
            // A clean stop is not a crash at start; the record names the checkpoint written.
            job.update(|r| r.unfinished_starts = 0);
            if let Err(e) = records::save(&coord.config.state_url, &job.record()).await {
                tracing::error!(job = %job.id, error = %e, "could not write the job record");
            }
            return;
        }
        Err(Stop::Failed(e)) => {
            span.in_scope(|| tracing::error!(job = %job.id, error = %e, "job failed"));
            job.update(|r| {
                r.state = JobState::Failed;
                r.message = e.to_string();
            });
        }
    }
    coord.admissions.release(&job.id);
    let record = job.record();
    span.record("state", record.state.as_str());
    tracing::info!(job = %job.id, state = record.state.as_str(), "job ended");
    if let Err(e) = records::save(&coord.config.state_url, &record).await {
        tracing::error!(job = %job.id, error = %e, "could not write the job record");
    }
}

async fn train(coord: &Arc<Coordinator>, job: &Arc<JobHandle>) -> Result<(), Stop> {
    let spec = &job.spec;
    // Written before anything that reads the job's inputs: if this start takes the process
    // down, the next coordinator sees it (see `MAX_UNFINISHED_STARTS`).
    job.update(|r| {
        r.state = JobState::Running;
        r.unfinished_starts += 1;
    });
    records::save(&coord.config.state_url, &job.record()).await?;
    if let Some(ev) = &spec.evaluate {
        return super::evaluation::run(coord, job, ev).await;
    }

    let dataset = StoreUrl::parse(&spec.dataset)?;
    let (manifest, manifest_sha) = load_manifest_with_sha(&dataset).await?;
    let plan = plan_for(spec, &dataset, &manifest).await?;
    if plan.train.samples.is_empty() {
        return Err(Error::invalid(
            "dataset",
            "no training samples after the validation hold-out",
        )
        .into());
    }
    if spec.selection.is_some() && plan.val.samples.is_empty() {
        return Err(Error::invalid(
            "selection",
            format!(
                "the validation split ({}) holds no samples to select the model by",
                plan.val.split
            ),
        )
        .into());
    }
    let model = model_for_job(spec, &manifest)?;
    let model_json = serde_json::to_string(&model).map_err(|e| Error::Compute(e.to_string()))?;
    let job_output = StoreUrl::parse(&spec.output)?.join(job.id.as_str())?;
    let prov = Provenance::new(job, &model, &manifest, &manifest_sha, &plan);
    let mut p = start_point(job, &model, &job_output).await?;
    records::save(&coord.config.state_url, &job.record()).await?;
    // Sharded aggregation: the parameters and Adam's state go to the aggregators, which step
    // them from now on; the coordinator reads them back where it needs them (`sync`).
    let shards = match spec.aggregators {
        0 => None,
        _ => Some(Arc::new(Shards::new(
            &job.id,
            spec,
            &coord.config.aggregators,
            coord.config.tls.as_ref(),
            p.params.len() as u64,
        )?)),
    };
    let watch = match &shards {
        Some(s) => {
            s.load(&p.params, &p.adam.snapshot()?, p.state.step.0)
                .await?;
            tracing::info!(job = %job.id, aggregators = s.routes().len(), "parameters sharded");
            Some(s.watch())
        }
        None => None,
    };
    let routes: Vec<ShardRoute> = shards
        .as_ref()
        .map(|s| s.routes().to_vec())
        .unwrap_or_default();
    let shards = shards.as_deref();

    let spe = plan.steps_per_epoch(spec.batch_size);
    let all_steps = spe * u64::from(spec.epochs);
    let total_steps = spec.max_steps.map_or(all_steps, |m| m.min(all_steps));
    tracing::info!(
        job = %job.id, train = plan.train.samples.len(), val = plan.val.samples.len(),
        steps_per_epoch = spe, total_steps, params = p.params.len(), "job planned"
    );
    job.update(|r| {
        r.total_steps = total_steps;
        r.classes = manifest.classes.clone();
    });
    job.publish_params(p.state.step.0, &p.params);
    let mut rate = RateMeter::default();
    let mut last_checkpoint = None;
    let job_span = Span::current();
    let mut last_val = None;
    let mut early = None;

    'epochs: while p.state.epoch < spec.epochs {
        early = stopped_early(spec, &p.state);
        if early.is_some() {
            break;
        }
        let epoch = p.state.epoch;
        let epoch_span = trace_span!(parent: &job_span, "epoch", job.id = %job.id, epoch);
        let order = plan.epoch_order(spec.seed, epoch);
        while p.state.step_in_epoch < spe {
            if p.state.step.0 >= total_steps {
                break 'epochs;
            }
            if let Err(stop) = wait_for_workers(coord, job).await {
                return preempted(job, &mut p, shards, &job_output, last_checkpoint, stop).await;
            }
            let started = Instant::now();
            let step = p.state.step.0;
            let step_span = if coord.config.traces_step(epoch, step) {
                trace_span!(parent: &epoch_span, "step", job.id = %job.id, epoch, step, samples = Empty, loss = Empty)
            } else {
                Span::none()
            };
            let round_trace = RoundTrace {
                tasks: carrier_of(&step_span),
                failures: carrier_of(if step_span.is_disabled() {
                    &epoch_span
                } else {
                    &step_span
                }),
            };
            let task_job = task_job(job, &model_json, &plan.train.split, &routes);
            let micro = plan.micro_batches(&order, p.state.step_in_epoch, spec);
            let leaves = micro.len() as u32;
            let per_task = spec.micro_batches_per_task as usize;
            let tasks: Vec<(Task, Block)> = micro
                .chunks(per_task)
                .enumerate()
                .map(|(b, block)| {
                    let samples = block.concat();
                    let task = Task {
                        id: TaskId(0),
                        kind: TaskKind::Train,
                        job: task_job.clone(),
                        epoch,
                        step: Step(step),
                        params_version: step,
                        num_params: p.params.len() as u64,
                        micro_batch_size: spec.micro_batch_size.min(samples.len() as u32),
                        samples,
                        block: shards.map(|_| TreeBlock {
                            first: (b * per_task) as u32,
                            leaves,
                        }),
                    };
                    let block = Block {
                        first: (b * per_task) as u32,
                        count: block.len() as u32,
                    };
                    (task, block)
                })
                .collect();
            let audited: Option<Vec<[u32; 2]>> = spec.audit.then(|| {
                tasks
                    .iter()
                    .flat_map(|(t, _)| t.samples.iter().map(|s| [s.shard, s.row]))
                    .collect()
            });
            let round = run_train_round(
                coord,
                job,
                tasks,
                leaves,
                &round_trace,
                &step_span,
                watch.as_ref(),
            );
            let sum = match round.await {
                Ok(r) => r,
                Err(stop) => {
                    return preempted(job, &mut p, shards, &job_output, last_checkpoint, stop)
                        .await;
                }
            };
            let (samples, loss, correct) = (sum.samples, sum.loss_sum, sum.correct);
            step_span.record("samples", samples);
            step_span.record("loss", loss / samples.max(1) as f64);
            let batch = u32::try_from(samples).map_err(|_| Error::invalid("batch", "too large"))?;
            p = match shards {
                Some(s) => {
                    let span = trace_span!(parent: &step_span, "optimizer", aggregators = s.routes().len());
                    s.apply(step, leaves, batch).instrument(span).await?;
                    p
                }
                None => reduce_and_step(p, sum.grad, batch, &step_span).await?,
            };
            p.state.step = Step(step + 1);
            p.state.step_in_epoch += 1;
            p.state.epoch_loss_sum += loss;
            p.state.epoch_samples += samples;
            p.state.epoch_correct += correct;
            if shards.is_none() {
                trace_span!(parent: &step_span, "publish", version = p.state.step.0)
                    .in_scope(|| job.publish_params(p.state.step.0, &p.params));
            }
            if job.record().unfinished_starts > 0 {
                job.update(|r| r.unfinished_starts = 0);
                records::save(&coord.config.state_url, &job.record()).await?;
            }
            // Which samples the applied step reduced. A step computed again after a restart
            // overwrites its record, so the records describe the steps that make up the final
            // parameters.
            if let Some(samples) = audited {
                let record = StepAudit {
                    epoch,
                    step,
                    train_samples: plan.train.samples.len(),
                    samples,
                };
                record.write(&job_output).await?;
            }
            let ips = rate.record(samples, started.elapsed().as_secs_f64());
            let workers = coord.workers.count() as u32;
            job.update(|r| {
                r.step = p.state.step.0;
                r.epoch = epoch;
                let seen = p.state.epoch_samples.max(1) as f64;
                r.metrics.train_loss = Some(p.state.epoch_loss_sum / seen);
                r.metrics.train_accuracy = Some(p.state.epoch_correct as f64 / seen);
                r.loss_curve.record(step, loss / samples.max(1) as f64);
                r.images_per_sec = ips;
                r.eta_seconds = rate.eta(total_steps.saturating_sub(p.state.step.0));
                r.workers = workers;
            });
            if p.state.step.0 % spec.checkpoint.every_steps == 0 {
                let parent = if step_span.is_disabled() {
                    &epoch_span
                } else {
                    &step_span
                };
                let span = trace_span!(parent: parent, "checkpoint", step = p.state.step.0);
                sync(&mut p, shards, spec).instrument(span.clone()).await?;
                checkpoint(job, &p, &job_output).instrument(span).await?;
                last_checkpoint = Some(p.state.step);
            }
        }
        // The epoch is complete: evaluate, then move the cursor to the next epoch. Sharded,
        // the parameters are read back and evaluated from the coordinator.
        if shards.is_some() {
            sync(&mut p, shards, spec).await?;
            job.publish_params(p.state.step.0, &p.params);
        }
        let eval_span = trace_span!(
            parent: &epoch_span,
            "evaluate",
            job.id = %job.id,
            epoch,
            step = p.state.step.0,
            samples = plan.val.samples.len(),
            val_loss = Empty,
            val_accuracy = Empty,
        );
        let at = EvalAt {
            epoch,
            version: p.state.step.0,
            num_params: p.params.len() as u64,
        };
        let val = evaluate(
            coord,
            job,
            &plan.val,
            &model_json,
            &manifest.classes,
            at,
            &eval_span,
        )
        .await;
        let val = match val {
            Ok(v) => v,
            Err(stop) => {
                return preempted(job, &mut p, shards, &job_output, last_checkpoint, stop).await;
            }
        };
        if let Some(v) = &val {
            eval_span.record("val_loss", v.loss);
            eval_span.record("val_accuracy", v.accuracy);
            judge_epoch(job, &prov, &mut p, epoch, v, &job_output)
                .instrument(eval_span.clone())
                .await?;
        }
        drop(eval_span);
        let seen = p.state.epoch_samples.max(1) as f64;
        let train_loss = p.state.epoch_loss_sum / seen;
        let train_accuracy = p.state.epoch_correct as f64 / seen;
        job.update(|r| {
            r.metrics.train_loss = Some(train_loss);
            r.metrics.train_accuracy = Some(train_accuracy);
            if let Some(v) = &val {
                r.metrics.val_loss = Some(v.loss);
                r.metrics.val_accuracy = Some(v.accuracy);
                r.metrics.val_auc = v.roc_auc;
                r.val_confusion = v.confusion.clone();
            }
            let metrics = r.metrics;
            r.history.push(EpochMetrics {
                epoch,
                step: p.state.step.0,
                metrics,
            });
        });
        if let Some(v) = &val {
            tracing::info!(job = %job.id, epoch, train_loss, val_loss = v.loss, val_accuracy = v.accuracy, "epoch done");
        }
        p.state.epoch += 1;
        p.state.step_in_epoch = 0;
        p.state.epoch_loss_sum = 0.0;
        p.state.epoch_samples = 0;
        p.state.epoch_correct = 0;
        last_val = val;
        records::save(&coord.config.state_url, &job.record()).await?;
    }
    sync(&mut p, shards, spec).await?;
    if shards.is_some() {
        // The final evaluations fetch the final parameters from the coordinator.
        job.publish_params(p.state.step.0, &p.params);
    }
    if last_checkpoint != Some(p.state.step) {
        let span = trace_span!(parent: &job_span, "checkpoint", step = p.state.step.0);
        checkpoint(job, &p, &job_output).instrument(span).await?;
        last_checkpoint = Some(p.state.step);
    }
    if let Some(reason) = &early {
        tracing::info!(job = %job.id, %reason, "early stopping");
    }
    let span = trace_span!(parent: &job_span, "export", step = p.state.step.0);
    let f = Finish {
        coord,
        job,
        plan: &plan,
        model_json: &model_json,
        prov: &prov,
        job_output: &job_output,
    };
    let (url, card) = match finish(f, &p, last_val, early.clone())
        .instrument(span)
        .await
    {
        Ok(done) => done,
        Err(stop) => {
            return preempted(job, &mut p, shards, &job_output, last_checkpoint, stop).await;
        }
    };
    job.update(|r| {
        r.model = Some(url.to_string());
        if let Some(reason) = early {
            r.message = reason;
        }
    });
    tracing::info!(job = %job.id, model = %url, sha256 = %card.weights_sha256, step = card.step.0, "model exported");
    Ok(())
}

/// The text of a panic's payload.
fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Where a round or a wait was stopped: when the coordinator is stopping, the job's state at
/// the step it completed last is checkpointed (unless that step's checkpoint exists), so that
/// a preempted coordinator loses nothing; other stops pass through.
async fn preempted(
    job: &JobHandle,
    p: &mut Progress,
    shards: Option<&Shards>,
    job_output: &StoreUrl,
    last_checkpoint: Option<Step>,
    stop: Stop,
) -> Result<(), Stop> {
    if !matches!(stop, Stop::Shutdown) {
        return Err(stop);
    }
    if last_checkpoint != Some(p.state.step) && p.state.step.0 > 0 {
        if let Err(Stop::Failed(e)) = sync(p, shards, &job.spec).await {
            tracing::warn!(job = %job.id, error = %e, "could not read the aggregators' shards; the job resumes from its last checkpoint");
            return Err(Stop::Shutdown);
        }
        let span = trace_span!("checkpoint", step = p.state.step.0, preempted = true);
        checkpoint(job, p, job_output).instrument(span).await?;
        tracing::info!(job = %job.id, step = p.state.step.0, "checkpointed for the coordinator's stop");
    }
    Err(Stop::Shutdown)
}
