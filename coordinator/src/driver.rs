//! A job's driver: plans each step, hands micro-batches to workers, reduces their gradients in
//! a fixed order, applies Adam, evaluates at epoch ends and checkpoints.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ctcluster_common::checkpoint::{
    Checkpoint, ModelCard, TrainingState, apply_retention, export_model, list_complete,
};
use ctcluster_common::dataset::{Manifest, load_manifest, load_shard};
use ctcluster_common::job::{EpochMetrics, JobState};
use ctcluster_common::model::ModelConfig;
use ctcluster_common::optim::{AdamSnapshot, FlatAdam};
use ctcluster_common::spec::JobSpec;
use ctcluster_common::storage::StoreUrl;
use ctcluster_common::{Error, Step};
use ctcluster_proto as pb;
use tokio::sync::mpsc;

use crate::error::CoordError;
use crate::job::JobHandle;
use crate::plan::{DataPlan, SplitRefs};
use crate::records;
use crate::scheduler::TaskResult;
use crate::state::Coordinator;

/// Samples per evaluation task.
const EVAL_BATCH: usize = 256;

enum Stop {
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

struct Progress {
    params: Vec<f32>,
    adam: FlatAdam,
    state: TrainingState,
}

async fn plan_for(
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

async fn start_point(
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

fn task_job(job: &JobHandle, model_json: &str, split: &str) -> pb::TaskJob {
    pb::TaskJob {
        job_id: job.id.to_string(),
        dataset_url: job.spec.dataset.clone(),
        model_json: model_json.to_string(),
        seed: job.spec.seed,
        split: split.to_string(),
    }
}

/// Hands tasks out and waits for every result; returns them in the order given.
async fn run_round(
    coord: &Coordinator,
    job: &JobHandle,
    tasks: Vec<pb::Task>,
) -> Result<Vec<TaskResult>, Stop> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let ids = coord.scheduler.submit(&job.id, tasks, &tx);
    drop(tx);
    let index: HashMap<_, _> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let mut slots: Vec<Option<TaskResult>> = (0..ids.len()).map(|_| None).collect();
    let mut remaining = ids.len();
    while remaining > 0 {
        let result = rx
            .recv()
            .await
            .ok_or_else(|| Stop::Failed(CoordError::Stale("the job's tasks were dropped".into())))?
            .map_err(|e| Stop::Failed(CoordError::TaskFailed(e)))?;
        if let Some(&i) = index.get(&result.task)
            && slots[i].is_none()
        {
            slots[i] = Some(result);
            remaining -= 1;
        }
    }
    Ok(slots.into_iter().flatten().collect())
}

/// Sums gradients in task order, divides by the batch size and applies Adam; off the async
/// threads.
async fn reduce_and_step(
    progress: Progress,
    results: Vec<TaskResult>,
    batch: u32,
) -> Result<Progress, Stop> {
    let out = tokio::task::spawn_blocking(move || {
        let Progress {
            params,
            mut adam,
            state,
        } = progress;
        let mut sum = vec![0f32; params.len()];
        for r in &results {
            for (s, g) in sum.iter_mut().zip(&r.gradient) {
                *s += *g;
            }
        }
        let b = batch as f32;
        for s in sum.iter_mut() {
            *s /= b;
        }
        let params = adam.step(params, sum)?;
        Ok::<_, Error>(Progress {
            params,
            adam,
            state,
        })
    })
    .await
    .map_err(|e| Error::Compute(format!("reduce panicked: {e}")))??;
    Ok(out)
}

async fn checkpoint(job: &JobHandle, p: &Progress, job_output: &StoreUrl) -> Result<(), Stop> {
    let ck = Checkpoint {
        state: p.state.clone(),
        params: p.params.clone(),
        adam: p.adam.snapshot().unwrap_or(AdamSnapshot {
            time: 0,
            moment_1: vec![],
            moment_2: vec![],
        }),
    };
    let url = ck.write(job_output).await?;
    apply_retention(job_output, job.spec.checkpoint.keep as usize).await?;
    tracing::info!(job = %job.id, checkpoint = %url, "checkpoint written");
    job.update(|r| r.checkpoint = Some(url.to_string()));
    Ok(())
}

async fn evaluate(
    coord: &Coordinator,
    job: &JobHandle,
    val: &SplitRefs,
    model_json: &str,
    p: &Progress,
) -> Result<Option<(f64, f64)>, Stop> {
    if val.samples.is_empty() {
        return Ok(None);
    }
    let tasks = val
        .samples
        .chunks(EVAL_BATCH)
        .map(|chunk| pb::Task {
            kind: pb::TaskKind::Eval as i32,
            job: Some(task_job(job, model_json, &val.split)),
            epoch: p.state.epoch,
            step: p.state.step.0,
            params_version: p.state.step.0,
            num_params: p.params.len() as u64,
            samples: chunk.to_vec(),
            ..Default::default()
        })
        .collect();
    let results = run_round(coord, job, tasks).await?;
    let n: u64 = results.iter().map(|r| u64::from(r.samples)).sum();
    let loss: f64 = results.iter().map(|r| r.loss_sum).sum();
    let correct: u64 = results.iter().map(|r| u64::from(r.correct)).sum();
    Ok(Some((loss / n as f64, correct as f64 / n as f64)))
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

/// Records which samples an applied step reduced: `<job output>/audit/step-N.json`. A step
/// computed again after a restart overwrites its file, so the files describe the steps that
/// make up the final parameters.
async fn write_audit(
    job_output: &StoreUrl,
    epoch: u32,
    step: u64,
    train_samples: usize,
    samples: Vec<[u32; 2]>,
) -> Result<(), Stop> {
    let record = serde_json::json!({
        "epoch": epoch,
        "step": step,
        "train_samples": train_samples,
        "samples": samples,
    });
    job_output
        .join(&format!("audit/step-{step:010}.json"))?
        .put(record.to_string().into_bytes())
        .await?;
    Ok(())
}

/// Holds the job in `waiting` while fewer than `min_workers` workers are registered.
async fn wait_for_workers(coord: &Coordinator, job: &JobHandle) {
    let want = job.spec.min_workers as usize;
    let mut waiting = false;
    loop {
        let have = coord.workers.count();
        if have >= want {
            break;
        }
        if !waiting {
            tracing::info!(job = %job.id, have, want, "waiting for workers");
            waiting = true;
        }
        job.update(|r| {
            r.state = JobState::Waiting;
            r.message = format!("waiting for workers: {have} of min_workers {want} registered");
            r.workers = have as u32;
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if waiting {
        job.update(|r| {
            r.state = JobState::Running;
            r.message.clear();
        });
    }
}

/// Images per second over the recent steps, and the ETA it implies.
#[derive(Default)]
struct RateMeter {
    step_seconds: f64,
    images_per_sec: f64,
}

impl RateMeter {
    fn record(&mut self, images: u64, seconds: f64) -> f64 {
        let seconds = seconds.max(1e-9);
        let ips = images as f64 / seconds;
        if self.step_seconds == 0.0 {
            self.step_seconds = seconds;
            self.images_per_sec = ips;
        } else {
            self.step_seconds = 0.8 * self.step_seconds + 0.2 * seconds;
            self.images_per_sec = 0.8 * self.images_per_sec + 0.2 * ips;
        }
        self.images_per_sec
    }

    fn eta(&self, steps_left: u64) -> f64 {
        self.step_seconds * steps_left as f64
    }
}
