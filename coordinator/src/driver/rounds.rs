//! Rounds of tasks: handing micro-batches out, collecting results, reducing, evaluating.

use std::collections::HashMap;
use std::sync::Arc;

use ctcluster_common::task::{Task, TaskJob, TaskKind};
use ctcluster_common::telemetry::carrier_of;
use ctcluster_common::{Error, TaskId, trace_span};
use tokio::sync::mpsc;
use tracing::Span;

use crate::error::CoordError;
use crate::job::JobHandle;
use crate::plan::SplitRefs;
use crate::scheduler::{RoundTrace, TaskResult};
use crate::state::Coordinator;

use super::run::Stop;
use super::start::Progress;

/// Samples per evaluation task.
const EVAL_BATCH: usize = 256;

pub(super) fn task_job(job: &JobHandle, model_json: &str, split: &str) -> Arc<TaskJob> {
    Arc::new(TaskJob {
        job_id: job.id.clone(),
        dataset_url: job.spec.dataset.clone(),
        model_json: model_json.to_string(),
        seed: job.spec.seed,
        split: split.to_string(),
    })
}

/// Hands tasks out and waits for every result; returns them in the order given.
pub(super) async fn run_round(
    coord: &Coordinator,
    job: &JobHandle,
    tasks: Vec<Task>,
    trace: &RoundTrace,
) -> Result<Vec<TaskResult>, Stop> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let ids = coord.scheduler.submit(&job.id, tasks, trace, &tx);
    drop(tx);
    let index: HashMap<_, _> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let mut slots: Vec<Option<TaskResult>> = (0..ids.len()).map(|_| None).collect();
    let mut remaining = ids.len();
    while remaining > 0 {
        // A stopping coordinator does not wait for the round: the job checkpoints the step it
        // completed last (see `run::train`) and resumes from it.
        let next = tokio::select! {
            r = rx.recv() => r,
            () = coord.shutdown.cancelled() => return Err(Stop::Shutdown),
        };
        let result = next
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
/// threads. Returns the spent gradient buffers too, for the caller to free off the critical
/// path (unmapping them takes longer than the reduction for a large model).
pub(super) async fn reduce_and_step(
    progress: Progress,
    results: Vec<TaskResult>,
    batch: u32,
    step_span: &Span,
) -> Result<(Progress, Vec<Vec<f32>>), Stop> {
    let step_span = step_span.clone();
    let out = tokio::task::spawn_blocking(move || {
        let Progress {
            params,
            mut adam,
            state,
        } = progress;
        let reduce = trace_span!(
            parent: &step_span,
            "reduce",
            results = results.len(),
            bytes = 4 * params.len() * results.len(),
        );
        // In place: the first result's gradient buffer accumulates the others.
        let mut grads: Vec<Vec<f32>> = results.into_iter().map(|r| r.gradient).collect();
        let sum = reduce.in_scope(|| ctcluster_common::optim::reduce_mean_in(&mut grads, batch))?;
        drop(reduce);
        let params = trace_span!(parent: &step_span, "optimizer", params = params.len())
            .in_scope(|| adam.step(params, sum))?;
        Ok::<_, Error>((
            Progress {
                params,
                adam,
                state,
            },
            grads,
        ))
    })
    .await
    .map_err(|e| Error::Compute(format!("reduce panicked: {e}")))??;
    Ok(out)
}

/// The model on the validation split.
pub(super) struct Validation {
    /// Mean loss.
    pub loss: f64,
    /// Accuracy.
    pub accuracy: f64,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<u64>>,
}

/// Evaluates the parameters on the validation split; `None` when it is empty.
pub(super) async fn evaluate(
    coord: &Coordinator,
    job: &JobHandle,
    val: &SplitRefs,
    model_json: &str,
    classes: usize,
    p: &Progress,
    span: &Span,
) -> Result<Option<Validation>, Stop> {
    if val.samples.is_empty() {
        return Ok(None);
    }
    let task_job = task_job(job, model_json, &val.split);
    let tasks = val
        .samples
        .chunks(EVAL_BATCH)
        .map(|chunk| Task {
            id: TaskId(0),
            kind: TaskKind::Eval,
            job: task_job.clone(),
            epoch: p.state.epoch,
            step: p.state.step,
            params_version: p.state.step.0,
            num_params: p.params.len() as u64,
            samples: chunk.to_vec(),
        })
        .collect();
    let trace = RoundTrace {
        tasks: carrier_of(span),
        failures: carrier_of(span),
    };
    let results = run_round(coord, job, tasks, &trace).await?;
    let n: u64 = results.iter().map(|r| u64::from(r.samples)).sum();
    let loss: f64 = results.iter().map(|r| r.loss_sum).sum();
    let correct: u64 = results.iter().map(|r| u64::from(r.correct)).sum();
    let mut confusion = vec![vec![0u64; classes]; classes];
    for r in results
        .iter()
        .filter(|r| r.confusion.len() == classes * classes)
    {
        for (i, &c) in r.confusion.iter().enumerate() {
            confusion[i / classes][i % classes] += u64::from(c);
        }
    }
    Ok(Some(Validation {
        loss: loss / n as f64,
        accuracy: correct as f64 / n as f64,
        confusion,
    }))
}
