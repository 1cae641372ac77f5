//! Rounds of tasks: handing micro-batches out, folding their results into the step's
//! reduction tree, applying Adam, evaluating.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ctcluster_common::evaluate::{EvalReport, report};
use ctcluster_common::reduce_tree::{Partial, TreeFold, into_mean};
use ctcluster_common::shards::ShardRoute;
use ctcluster_common::task::{Task, TaskJob, TaskKind};
use ctcluster_common::telemetry::carrier_of;
use ctcluster_common::{Error, Step, TaskId, trace_span};
use tokio::sync::mpsc;
use tracing::Span;
use tracing::field::Empty;

use crate::error::CoordError;
use crate::job::JobHandle;
use crate::plan::SplitRefs;
use crate::scheduler::{RoundTrace, TaskOutcome, TaskResult};
use crate::state::Coordinator;

use super::run::Stop;
use super::shards::Watch;
use super::start::Progress;

/// Samples per evaluation task.
const EVAL_BATCH: usize = 256;

/// What every task of a round shares; `shards`: the aggregators training tasks use (empty:
/// the coordinator).
pub(super) fn task_job(
    job: &JobHandle,
    model_json: &str,
    split: &str,
    shards: &[ShardRoute],
) -> Arc<TaskJob> {
    Arc::new(TaskJob {
        job_id: job.id.clone(),
        dataset_url: job.spec.dataset.clone(),
        model_json: model_json.to_string(),
        seed: job.spec.seed,
        split: split.to_string(),
        gradient_dtype: job.spec.gradient_dtype,
        shards: shards.to_vec(),
    })
}

/// The next result of a round. A stopping coordinator does not wait for the round: the job
/// checkpoints the step it completed last (see `run::train`) and resumes from it.
/// With sharded aggregation, a lost aggregator stops the round (`watch`).
async fn next_result(
    coord: &Coordinator,
    rx: &mut mpsc::UnboundedReceiver<TaskOutcome>,
    watch: Option<&Watch>,
) -> Result<TaskResult, Stop> {
    let lost = async {
        match watch {
            Some(w) => w.lost().await,
            None => std::future::pending().await,
        }
    };
    let next = tokio::select! {
        r = rx.recv() => r,
        () = coord.shutdown.cancelled() => return Err(Stop::Shutdown),
        e = lost => return Err(Stop::Failed(e)),
    };
    next.ok_or_else(|| Stop::Failed(CoordError::Stale("the job's tasks were dropped".into())))?
        .map_err(|e| Stop::Failed(CoordError::TaskFailed(e)))
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
        let result = next_result(coord, &mut rx, None).await?;
        if let Some(&i) = index.get(&result.task)
            && slots[i].is_none()
        {
            slots[i] = Some(result);
            remaining -= 1;
        }
    }
    Ok(slots.into_iter().flatten().collect())
}

/// Where a training task's micro-batches sit among its step's: `first..first + count`, an
/// aligned block of the step's reduction tree.
#[derive(Clone, Copy, Debug)]
pub(super) struct Block {
    pub first: u32,
    pub count: u32,
}

/// Hands a step's training tasks out and folds each result into the step's reduction tree as it
/// arrives (off the async threads), so that the coordinator holds one gradient per subtree
/// waiting for its sibling, not one per task, and at most
/// [`GRADIENTS_IN_FLIGHT`](crate::job::GRADIENTS_IN_FLIGHT) being received or waiting here. Returns the step's sum. With sharded aggregation
/// (`watch` given) the results carry no gradient (the aggregators fold theirs): the sum is of
/// the losses and counts only.
pub(super) async fn run_train_round(
    coord: &Coordinator,
    job: &JobHandle,
    tasks: Vec<(Task, Block)>,
    leaves: u32,
    trace: &RoundTrace,
    step_span: &Span,
    watch: Option<&Watch>,
) -> Result<Partial, Stop> {
    let (tasks, blocks): (Vec<Task>, Vec<Block>) = tasks.into_iter().unzip();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let ids = coord.scheduler.submit(&job.id, tasks, trace, &tx);
    drop(tx);
    let index: HashMap<_, _> = ids.iter().copied().zip(blocks).collect();
    let mut done = HashSet::new();
    let mut fold = Some(TreeFold::new(leaves)?);
    let reduce = trace_span!(
        parent: step_span,
        "reduce",
        leaves,
        results = ids.len(),
        peak_pending = Empty,
    );
    while done.len() < ids.len() {
        let result = next_result(coord, &mut rx, watch).await?;
        let Some(&block) = index.get(&result.task) else {
            continue;
        };
        if !done.insert(result.task) {
            continue;
        }
        let sum = Partial {
            grad: result.gradient,
            loss_sum: result.loss_sum,
            samples: u64::from(result.samples),
            correct: u64::from(result.correct),
        };
        let mut f = fold
            .take()
            .ok_or_else(|| CoordError::Internal("fold lost".into()))?;
        let span = reduce.clone();
        fold = Some(
            tokio::task::spawn_blocking(move || {
                span.in_scope(|| f.push(block.first, block.count, sum))?;
                Ok::<_, Error>(f)
            })
            .await
            .map_err(|e| Error::Compute(format!("reduce panicked: {e}")))??,
        );
        // Folded: the job may take in another gradient.
        drop(result.slot);
    }
    let fold = fold.ok_or_else(|| CoordError::Internal("fold lost".into()))?;
    reduce.record("peak_pending", fold.peak_pending());
    Ok(fold.finish()?)
}

/// Divides the step's sum by its batch size and applies Adam; off the async threads.
pub(super) async fn reduce_and_step(
    progress: Progress,
    sum: Vec<f32>,
    batch: u32,
    step_span: &Span,
) -> Result<Progress, Stop> {
    let step_span = step_span.clone();
    let out = tokio::task::spawn_blocking(move || {
        let Progress {
            params,
            mut adam,
            state,
        } = progress;
        let mean = into_mean(sum, batch);
        let params = trace_span!(parent: &step_span, "optimizer", params = params.len())
            .in_scope(|| adam.step(params, mean))?;
        Ok::<_, Error>(Progress {
            params,
            adam,
            state,
        })
    })
    .await
    .map_err(|e| Error::Compute(format!("optimizer panicked: {e}")))??;
    Ok(out)
}

/// Which published parameters an evaluation round runs with.
#[derive(Clone, Copy, Debug)]
pub(super) struct EvalAt {
    /// The epoch (for the tasks' records).
    pub epoch: u32,
    /// The parameters' version (the step they were published at).
    pub version: u64,
    /// Their length.
    pub num_params: u64,
}

/// Evaluates the published parameters `at` on a split with the cluster's workers: every
/// sample's probabilities come back, in split order whatever the number of workers, and the
/// report is the same function of them as `ctctl evaluate --local`'s. `None` when the split
/// is empty.
pub(super) async fn evaluate(
    coord: &Coordinator,
    job: &JobHandle,
    split: &SplitRefs,
    model_json: &str,
    classes: &[String],
    at: EvalAt,
    span: &Span,
) -> Result<Option<EvalReport>, Stop> {
    if split.samples.is_empty() {
        return Ok(None);
    }
    let task_job = task_job(job, model_json, &split.split, &[]);
    let tasks = split
        .samples
        .chunks(EVAL_BATCH)
        .map(|chunk| Task {
            id: TaskId(0),
            kind: TaskKind::Eval,
            job: task_job.clone(),
            epoch: at.epoch,
            step: Step(at.version),
            params_version: at.version,
            num_params: at.num_params,
            samples: chunk.to_vec(),
            micro_batch_size: chunk.len() as u32,
            block: None,
        })
        .collect();
    let trace = RoundTrace {
        tasks: carrier_of(span),
        failures: carrier_of(span),
    };
    let results = run_round(coord, job, tasks, &trace).await?;
    let k = classes.len();
    let mut loss = 0.0;
    let mut probs = Vec::with_capacity(split.samples.len() * k);
    let mut labels = Vec::with_capacity(split.samples.len());
    for r in results {
        // Checked against the model when the result was pushed.
        if r.labels.len() != r.samples as usize || r.probs.len() != r.labels.len() * k {
            return Err(Stop::Failed(CoordError::Internal(format!(
                "evaluation result of task {} has {} labels and {} probabilities",
                r.task,
                r.labels.len(),
                r.probs.len()
            ))));
        }
        loss += r.loss_sum;
        probs.extend_from_slice(&r.probs);
        labels.extend_from_slice(&r.labels);
    }
    let (name, classes) = (split.split.clone(), classes.to_vec());
    let report = tokio::task::spawn_blocking(move || report(name, classes, loss, &probs, &labels))
        .await
        .map_err(|e| Error::Compute(format!("evaluation report panicked: {e}")))?;
    Ok(Some(report))
}
