//! A unit of work as the coordinator plans it and a worker computes it: one micro-batch of one
//! step (training) or one batch of a validation pass (evaluation), and what a worker reports
//! back. The wire forms are converted at the gRPC edge (`crate::wire`); nothing past the edge
//! sees them.

use std::fmt;
use std::sync::Arc;

use crate::dtype::GradientDtype;
use crate::shards::ShardRoute;
use crate::{JobId, Step, TaskId, WorkerId};

/// What a task computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaskKind {
    /// Forward and backward: the gradient of the summed loss.
    Train,
    /// Forward only: loss, accuracy and confusion counts.
    Eval,
}

impl TaskKind {
    /// Lowercase name, for logs and traces.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Train => "train",
            TaskKind::Eval => "eval",
        }
    }
}

/// One sample: a row of a shard of a split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SampleRef {
    /// Shard index within the split.
    pub shard: u32,
    /// Row within the shard.
    pub row: u32,
}

/// The parts of a job a worker needs to compute its tasks; shared by every task of a round.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskJob {
    /// The job.
    pub job_id: JobId,
    /// Where its dataset is (a storage URL).
    pub dataset_url: String,
    /// The model configuration as JSON (a [`crate::model::ModelConfig`]).
    pub model_json: String,
    /// The job's seed (augmentation and dropout draws derive from it).
    pub seed: u64,
    /// The split the samples refer to.
    pub split: String,
    /// How a training result's gradient is encoded.
    pub gradient_dtype: GradientDtype,
    /// Sharded aggregation: the aggregators holding the parameters, by range (empty: the
    /// coordinator holds them). Training tasks fetch parameters from and push gradients to
    /// these, and report to the coordinator without a gradient.
    pub shards: Vec<ShardRoute>,
}

impl TaskJob {
    /// The model's class count, from its configuration (an evaluation result has that many
    /// probabilities per sample).
    pub fn classes(&self) -> crate::Result<usize> {
        #[derive(serde::Deserialize)]
        struct Outputs {
            classes: usize,
        }
        serde_json::from_str::<Outputs>(&self.model_json)
            .map(|o| o.classes)
            .map_err(|e| crate::Error::invalid("model_json", e.to_string()))
    }
}

/// A task of a job, as queued by the coordinator and handed to a worker.
#[derive(Clone, Debug, PartialEq)]
pub struct Task {
    /// Assigned when the task is queued (0 before).
    pub id: TaskId,
    /// Training or evaluation.
    pub kind: TaskKind,
    /// The job it belongs to.
    pub job: Arc<TaskJob>,
    /// 0-based epoch.
    pub epoch: u32,
    /// The step the task belongs to.
    pub step: Step,
    /// Version (step) of the parameters to compute with.
    pub params_version: u64,
    /// Length of the parameter vector.
    pub num_params: u64,
    /// The samples, in batch order.
    pub samples: Vec<SampleRef>,
    /// Training: the samples are cut, in order, into micro-batches of this many (the last may
    /// be shorter), whose gradients the worker sums in the step's fixed reduction tree
    /// (`crate::reduce_tree`); in 1..=samples.len(). Equal to the sample count when the task is
    /// one micro-batch.
    pub micro_batch_size: u32,
    /// Sharded aggregation (training): where the task's micro-batches sit in its step's
    /// reduction tree, for the aggregators to fold its gradient shards there.
    pub block: Option<TreeBlock>,
}

/// A training task's place in its step's reduction tree: micro-batches `first ..
/// first + count` of `leaves`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TreeBlock {
    /// The task's first micro-batch among its step's.
    pub first: u32,
    /// Micro-batches of the step.
    pub leaves: u32,
}

impl Task {
    /// Gradient values a result of this task must carry to the coordinator: the parameter
    /// count for training (none when the gradient goes to aggregators), none for evaluation.
    pub fn gradient_len(&self) -> u64 {
        match self.kind {
            TaskKind::Train if self.job.shards.is_empty() => self.num_params,
            TaskKind::Train | TaskKind::Eval => 0,
        }
    }

    /// Micro-batches the task's samples are cut into.
    pub fn micro_batches(&self) -> u32 {
        self.samples
            .len()
            .div_ceil(self.micro_batch_size.max(1) as usize) as u32
    }
}

/// Why a task could not be computed, as far as retrying it goes. Decided by the worker from its
/// error's type, acted on by the coordinator's scheduler.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The input itself is bad (a corrupt or missing shard, an invalid model): every worker
    /// would fail the same way, so the task is not tried again and its job fails at once.
    BadInput,
    /// Something of the worker's or of the moment (storage unreachable, a key this worker
    /// lacks, a backend fault): the task is tried again, on other workers where there are any.
    Retryable,
    /// Sharded aggregation: an aggregator did not answer or had lost the job's shard. The
    /// coordinator's watch over its aggregators resumes the job when one is lost; meanwhile
    /// the task is tried again without counting against it (up to a bound).
    Aggregator,
}

/// A task's failure as a worker reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskFailure {
    /// Whether trying again may help.
    pub kind: FailureKind,
    /// What failed and where.
    pub message: String,
}

impl TaskFailure {
    /// Longest message kept from a worker.
    pub const MAX_MESSAGE_CHARS: usize = 4096;

    /// A retryable failure.
    pub fn retryable(message: impl Into<String>) -> Self {
        TaskFailure {
            kind: FailureKind::Retryable,
            message: message.into(),
        }
    }

    /// A failure caused by bad input.
    pub fn bad_input(message: impl Into<String>) -> Self {
        TaskFailure {
            kind: FailureKind::BadInput,
            message: message.into(),
        }
    }
}

impl fmt::Display for TaskFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// What a worker reports about one task, ahead of the gradient itself.
#[derive(Clone, Debug, PartialEq)]
pub struct ResultHeader {
    /// The reporting worker.
    pub worker: WorkerId,
    /// The task's job, as the worker understood it.
    pub job: JobId,
    /// The task.
    pub task: TaskId,
    /// The task's step, as the worker understood it.
    pub step: Step,
    /// Samples computed.
    pub samples: u32,
    /// Summed (not mean) loss over them.
    pub loss_sum: f64,
    /// Correct predictions among them.
    pub correct: u32,
    /// Gradient values that follow (0 for evaluation).
    pub gradient_len: u64,
    /// Their encoding.
    pub gradient_dtype: GradientDtype,
    /// Seconds spent in forward/backward.
    pub compute_seconds: f64,
    /// Seconds spent getting parameters and data and building the batch.
    pub fetch_seconds: f64,
    /// Evaluation: counts of (true, predicted) class, row-major.
    pub confusion: Vec<u32>,
    /// Evaluation: each sample's class probabilities, row-major, in the task's sample order.
    pub probs: Vec<f32>,
    /// Evaluation: each sample's label, in the task's sample order.
    pub labels: Vec<u32>,
    /// Set when the task could not be computed.
    pub failure: Option<TaskFailure>,
}

impl ResultHeader {
    /// Checks an evaluation result's per-sample outputs against the task and against its own
    /// counts: one label below `classes` and `classes` probabilities (finite, in [0, 1]) per
    /// sample, and confusion and correct counts that are exactly what those give. A result
    /// that fails is not believed; the error says what is wrong.
    pub fn check_eval_outputs(&self, classes: usize) -> Result<(), String> {
        let n = self.samples as usize;
        if self.labels.len() != n || self.probs.len() != n.saturating_mul(classes) {
            return Err(format!(
                "{} labels and {} probabilities for {n} samples of {classes} classes",
                self.labels.len(),
                self.probs.len()
            ));
        }
        if let Some(l) = self.labels.iter().find(|&&l| l as usize >= classes) {
            return Err(format!("label {l} for a model of {classes} classes"));
        }
        if let Some(p) = self.probs.iter().find(|p| !(0.0..=1.0).contains(*p)) {
            return Err(format!("probability {p} is not in [0, 1]"));
        }
        let mut confusion = vec![0u32; classes * classes];
        for (row, &label) in self.probs.chunks_exact(classes.max(1)).zip(&self.labels) {
            confusion[label as usize * classes + crate::model::argmax(row)] += 1;
        }
        let correct: u32 = (0..classes).map(|c| confusion[c * classes + c]).sum();
        if confusion != self.confusion || correct != self.correct {
            return Err(format!(
                "its confusion counts and {} correct are not what its probabilities and labels \
                 give ({correct} correct)",
                self.correct
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval_result() -> ResultHeader {
        ResultHeader {
            worker: WorkerId(1),
            job: JobId::generate(),
            task: TaskId(3),
            step: Step(2),
            samples: 3,
            loss_sum: 1.5,
            correct: 2,
            gradient_len: 0,
            gradient_dtype: GradientDtype::F32,
            compute_seconds: 0.1,
            fetch_seconds: 0.1,
            confusion: vec![1, 1, 0, 1],
            probs: vec![0.9, 0.1, 0.3, 0.7, 0.2, 0.8],
            labels: vec![0, 0, 1],
            failure: None,
        }
    }

    #[test]
    fn evaluation_outputs_must_agree_with_their_counts() {
        assert_eq!(eval_result().check_eval_outputs(2), Ok(()));
        let fails = |f: &dyn Fn(&mut ResultHeader), classes: usize, words: &str| {
            let mut r = eval_result();
            f(&mut r);
            let e = r.check_eval_outputs(classes).unwrap_err();
            assert!(e.contains(words), "{e}");
        };
        // The model has three classes, the result two columns.
        fails(&|_| {}, 3, "6 probabilities for 3 samples of 3 classes");
        fails(
            &|r| {
                r.labels.pop();
            },
            2,
            "2 labels",
        );
        fails(&|r| r.labels[2] = 2, 2, "label 2");
        fails(&|r| r.probs[1] = f32::NAN, 2, "NaN");
        fails(&|r| r.probs[1] = 1.5, 2, "1.5");
        // Forged counts: a better confusion matrix than the probabilities give.
        fails(
            &|r| r.confusion = vec![2, 0, 0, 1],
            2,
            "not what its probabilities",
        );
        fails(&|r| r.correct = 3, 2, "3 correct");
    }
}
