//! A job's record: its state, progress and metrics. The coordinator keeps it in memory and
//! writes it to the object store on every change of state and at every epoch end.

use serde::{Deserialize, Serialize};

use crate::JobId;
use crate::telemetry::TraceCarrier;

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Accepted, not started.
    Queued,
    /// Training.
    Running,
    /// Finished; the model is written.
    Succeeded,
    /// Stopped by an error (see the message).
    Failed,
    /// Stopped by the user.
    Cancelled,
    /// Started, but fewer workers than `min_workers` are registered; resumes by itself.
    Waiting,
}

impl JobState {
    /// Whether the job has ended.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }

    /// Lowercase name, as `ctctl` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Waiting => "waiting",
        }
    }
}

/// Metrics of the newest epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Mean training loss over the epoch (so far, while it runs).
    pub train_loss: Option<f64>,
    /// Training accuracy over the epoch (each batch scored before its update).
    #[serde(default)]
    pub train_accuracy: Option<f64>,
    /// Mean loss on the validation split at the last epoch end.
    pub val_loss: Option<f64>,
    /// Accuracy on the validation split at the last epoch end.
    pub val_accuracy: Option<f64>,
    /// ROC-AUC on the validation split at the last epoch end.
    #[serde(default)]
    pub val_auc: Option<f64>,
}

/// Metrics at one epoch end.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 0-based epoch.
    pub epoch: u32,
    /// Step count at its end.
    pub step: u64,
    /// The metrics.
    pub metrics: Metrics,
}

/// Everything known about a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The id.
    pub id: JobId,
    /// The spec's name.
    pub name: String,
    /// Life-cycle state.
    pub state: JobState,
    /// Why it is in that state (an error for failed jobs).
    pub message: String,
    /// The spec as submitted.
    pub spec_yaml: String,
    /// Epoch in progress (0-based).
    pub epoch: u32,
    /// Epochs in the job.
    pub epochs: u32,
    /// Steps taken.
    pub step: u64,
    /// Steps the job will take in all.
    pub total_steps: u64,
    /// Newest metrics.
    pub metrics: Metrics,
    /// Metrics of every finished epoch.
    pub history: Vec<EpochMetrics>,
    /// URL of the newest complete checkpoint.
    pub checkpoint: Option<String>,
    /// URL of the exported model.
    pub model: Option<String>,
    /// A job that evaluates a model: URL of its report (`evaluation.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<String>,
    /// Recent training throughput.
    pub images_per_sec: f64,
    /// Estimated seconds to the end.
    pub eta_seconds: f64,
    /// Workers registered with the coordinator.
    pub workers: u32,
    /// Results refused (wrong shape, stale step, NaN/Inf) and computed again.
    #[serde(default)]
    pub rejected_results: u64,
    /// Straggling tasks handed to a second worker.
    #[serde(default)]
    pub reissued_tasks: u64,
    /// Tasks put back in the queue because the worker computing them was lost.
    #[serde(default)]
    pub requeued_tasks: u64,
    /// Times the job was resumed from a checkpoint.
    #[serde(default)]
    pub resumes: u32,
    /// The step of the checkpoint it was last resumed from.
    #[serde(default)]
    pub resumed_from_step: Option<u64>,
    /// Class names, in label order (known once the job started).
    #[serde(default)]
    pub classes: Vec<String>,
    /// `val_confusion[true][predicted]` on the validation split at the last epoch end.
    #[serde(default)]
    pub val_confusion: Vec<Vec<u64>>,
    /// Training loss per step, thinned to at most [`LossCurve::MAX_POINTS`] points.
    #[serde(default)]
    pub loss_curve: LossCurve,
    /// The user who submitted the job (`anonymous` on an `--insecure` coordinator). Only
    /// they and admins see and cancel it.
    #[serde(default)]
    pub owner: String,
    /// The trace context of the `ctctl submit` that created the job: the job's spans join that
    /// trace, also after a coordinator restart. Empty when the submit was not traced.
    #[serde(default)]
    pub trace_context: TraceCarrier,
    /// Times in a row the job's driver started without reaching its first step and without
    /// ending cleanly: each start writes it up, the first step (or a clean stop) resets it.
    /// A coordinator that finds it at [`MAX_UNFINISHED_STARTS`] fails the job instead of
    /// starting it again, so a job whose start takes the process down cannot do so forever.
    #[serde(default)]
    pub unfinished_starts: u32,
    /// Coordinator memory reserved for the job at admission (see the README's limits).
    #[serde(default)]
    pub reserved_bytes: u64,
}

/// Starts in a row that never reached a step after which a job is failed, not started again.
pub const MAX_UNFINISHED_STARTS: u32 = 3;

impl JobRecord {
    /// A fresh record for a queued job.
    pub fn queued(id: JobId, name: String, spec_yaml: String, epochs: u32) -> Self {
        JobRecord {
            id,
            name,
            state: JobState::Queued,
            message: String::new(),
            spec_yaml,
            epoch: 0,
            epochs,
            step: 0,
            total_steps: 0,
            metrics: Metrics::default(),
            history: Vec::new(),
            checkpoint: None,
            model: None,
            evaluation: None,
            images_per_sec: 0.0,
            eta_seconds: 0.0,
            workers: 0,
            rejected_results: 0,
            reissued_tasks: 0,
            requeued_tasks: 0,
            resumes: 0,
            resumed_from_step: None,
            trace_context: TraceCarrier::new(),
            owner: String::new(),
            classes: Vec::new(),
            val_confusion: Vec::new(),
            loss_curve: LossCurve::default(),
            unfinished_starts: 0,
            reserved_bytes: 0,
        }
    }
}

/// Training loss against step, kept small for long jobs: every `stride`-th step, with the
/// stride doubling (and every other point dropped) whenever the curve is full.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LossCurve {
    /// Steps between points (0 until the first point).
    pub stride: u64,
    /// `(step, mean loss of that step's batch)`.
    pub points: Vec<(u64, f64)>,
}

impl LossCurve {
    /// Points kept at most.
    pub const MAX_POINTS: usize = 1000;

    /// Records the loss of the batch of `step` (0-based), if the step falls on the stride.
    pub fn record(&mut self, step: u64, loss: f64) {
        self.stride = self.stride.max(1);
        if !step.is_multiple_of(self.stride) {
            return;
        }
        // A step redone after a restart replaces the later points.
        self.points.retain(|(s, _)| *s < step);
        self.points.push((step, loss));
        if self.points.len() >= Self::MAX_POINTS {
            self.stride *= 2;
            let stride = self.stride;
            self.points.retain(|(s, _)| s.is_multiple_of(stride));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_curve_stays_small_and_evenly_spaced() {
        let mut c = LossCurve::default();
        for step in 0..10_000 {
            c.record(step, 1.0 / (step as f64 + 1.0));
        }
        assert!(c.points.len() < LossCurve::MAX_POINTS);
        assert!(c.points.len() > LossCurve::MAX_POINTS / 4);
        assert_eq!(c.points[0], (0, 1.0));
        assert!(c.points.windows(2).all(|w| w[1].0 - w[0].0 == c.stride));
    }

    #[test]
    fn loss_curve_replaces_redone_steps() {
        let mut c = LossCurve::default();
        for step in 0..10 {
            c.record(step, 1.0);
        }
        c.record(5, 2.0);
        assert_eq!(c.points.last(), Some(&(5, 2.0)));
        assert_eq!(c.points.len(), 6);
    }
}
