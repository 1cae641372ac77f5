//! How job statuses are shown: JSON for scripts, tables for people.

use ctcluster_common::job::JobState;
use ctcluster_proto as pb;
use serde::Serialize;

/// A job's status as `ctctl status -o json` prints it.
#[derive(Debug, Serialize)]
pub struct StatusJson {
    /// Job id.
    pub id: String,
    /// Spec name.
    pub name: String,
    /// queued, running, succeeded, failed or cancelled.
    pub state: &'static str,
    /// Why it is in that state.
    pub message: String,
    /// Epoch (0-based).
    pub epoch: u32,
    /// Epochs in all.
    pub epochs: u32,
    /// Steps taken.
    pub step: u64,
    /// Steps in all.
    pub total_steps: u64,
    /// Newest metrics.
    pub metrics: MetricsJson,
    /// Newest checkpoint URL.
    pub checkpoint: Option<String>,
    /// Exported model URL.
    pub model: Option<String>,
    /// Recent throughput.
    pub images_per_sec: f64,
    /// Seconds left.
    pub eta_seconds: f64,
    /// Workers in the cluster.
    pub workers: u32,
    /// Results refused and computed again.
    pub rejected_results: u64,
    /// Straggling tasks handed to a second worker.
    pub reissued_tasks: u64,
    /// Tasks computed again because their worker was lost.
    pub requeued_tasks: u64,
    /// Times the job was resumed from a checkpoint.
    pub resumes: u32,
    /// The step of the checkpoint it was last resumed from.
    pub resumed_from_step: Option<u64>,
    /// The worker taking longest per task, if one stands out.
    pub slowest_worker: Option<String>,
    /// Why it is slow.
    pub slowest_reason: Option<String>,
    /// Who submitted the job.
    pub owner: String,
}

/// Metrics in the JSON status.
#[derive(Debug, Serialize)]
pub struct MetricsJson {
    /// Mean training loss.
    pub train_loss: Option<f64>,
    /// Validation loss.
    pub val_loss: Option<f64>,
    /// Validation accuracy.
    pub val_accuracy: Option<f64>,
    /// Validation ROC-AUC.
    pub val_auc: Option<f64>,
}

/// A status's job state (`None` for a value this `ctctl` does not know).
pub fn job_state(raw: i32) -> Option<JobState> {
    JobState::try_from(raw).ok()
}

/// Lowercase state name.
pub fn state_name(raw: i32) -> &'static str {
    job_state(raw).map_or("unknown", JobState::as_str)
}

/// Whether the state is final.
pub fn is_terminal(raw: i32) -> bool {
    job_state(raw).is_some_and(JobState::is_terminal)
}

/// Text from elsewhere (job names, messages, worker names) made safe for a terminal: control
/// characters (escape sequences, carriage returns, newlines) are shown escaped (`\u{1b}`), so
/// that a crafted name cannot move the cursor, rewrite the screen or forge a line.
pub fn safe(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

impl From<&pb::JobStatus> for StatusJson {
    fn from(s: &pb::JobStatus) -> Self {
        let m = s.metrics.unwrap_or_default();
        StatusJson {
            id: s.id.clone(),
            name: s.name.clone(),
            state: state_name(s.state),
            message: s.message.clone(),
            epoch: s.epoch,
            epochs: s.epochs,
            step: s.step,
            total_steps: s.total_steps,
            metrics: MetricsJson {
                train_loss: m.train_loss,
                val_loss: m.val_loss,
                val_accuracy: m.val_accuracy,
                val_auc: m.val_auc,
            },
            checkpoint: non_empty(&s.checkpoint),
            model: non_empty(&s.model),
            images_per_sec: s.images_per_sec,
            eta_seconds: s.eta_seconds,
            workers: s.workers,
            rejected_results: s.rejected_results,
            reissued_tasks: s.reissued_tasks,
            requeued_tasks: s.requeued_tasks,
            resumes: s.resumes,
            resumed_from_step: s.resumed_from_step,
            slowest_worker: non_empty(&s.slowest_worker),
            slowest_reason: non_empty(&s.slowest_reason),
            owner: s.owner.clone(),
        }
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

/// A multi-line human summary of one job.
pub fn status_text(s: &pb::JobStatus) -> String {
    let j = StatusJson::from(s);
    let (name, message) = (safe(&j.name), safe(&j.message));
    let mut out = format!(
        "job        {}  ({})\nstate      {}{}\nprogress   epoch {}/{}  step {}/{}\nmetrics    train_loss {}  val_loss {}  val_accuracy {}  val_auc {}\nthroughput {:.0} images/s  eta {:.0}s  workers {}\n",
        j.id,
        name,
        j.state,
        if message.is_empty() {
            String::new()
        } else {
            format!(": {message}")
        },
        (j.epoch + 1).min(j.epochs.max(1)),
        j.epochs,
        j.step,
        j.total_steps,
        opt(j.metrics.train_loss, 4),
        opt(j.metrics.val_loss, 4),
        opt(j.metrics.val_accuracy, 4),
        opt(j.metrics.val_auc, 4),
        j.images_per_sec,
        j.eta_seconds,
        j.workers,
    );
    if let Some(c) = &j.checkpoint {
        out.push_str(&format!("checkpoint {}\n", safe(c)));
    }
    if let Some(m) = &j.model {
        out.push_str(&format!("model      {}\n", safe(m)));
    }
    if let (Some(w), Some(r)) = (&j.slowest_worker, &j.slowest_reason) {
        out.push_str(&format!("slowest    {}: {}\n", safe(w), safe(r)));
    }
    out
}

/// One line per worker, then the slowest.
pub fn workers_text(r: &pb::ListWorkersResponse) -> String {
    let mut out = format!(
        "{:<10} {:<20} {:<8} {:>9} {:>7} {:>9} {:>9} {:>9} {:>9}\n",
        "ID", "NAME", "DEVICE", "SEEN_MS", "TASKS", "IMG/S", "DATA_S", "COMPUTE_S", "NET_S"
    );
    for w in &r.workers {
        out.push_str(&format!(
            "{:<10} {:<20} {:<8} {:>9} {:>7} {:>9.0} {:>9.3} {:>9.3} {:>9.3}\n",
            w.id,
            safe(&w.name),
            safe(&w.device),
            w.last_seen_ms,
            w.tasks,
            w.images_per_sec,
            w.fetch_seconds,
            w.compute_seconds,
            w.network_seconds
        ));
    }
    if !r.slowest_worker.is_empty() {
        out.push_str(&format!(
            "slowest: {}: {}\n",
            safe(&r.slowest_worker),
            safe(&r.slowest_reason)
        ));
    }
    out
}

/// One line per job.
pub fn list_text(jobs: &[pb::JobStatus]) -> String {
    let mut out = format!(
        "{:<18} {:<10} {:>11} {:>9} {:>8}  {}\n",
        "ID", "STATE", "STEP", "VAL_ACC", "LOSS", "NAME"
    );
    for s in jobs {
        let j = StatusJson::from(s);
        out.push_str(&format!(
            "{:<18} {:<10} {:>11} {:>9} {:>8}  {}\n",
            j.id,
            j.state,
            format!("{}/{}", j.step, j.total_steps),
            opt(j.metrics.val_accuracy, 4),
            opt(j.metrics.train_loss, 4),
            safe(&j.name)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_from_elsewhere_are_shown_escaped() {
        let s = pb::JobStatus {
            id: "job-1".into(),
            name: "x\u{1b}[2J\rFAKE".into(),
            message: "line\nforged: ok".into(),
            ..Default::default()
        };
        for text in [status_text(&s), list_text(std::slice::from_ref(&s))] {
            assert!(!text.contains('\u{1b}') && !text.contains('\r'), "{text:?}");
            assert!(text.contains("\\u{1b}[2J\\u{d}FAKE"), "{text:?}");
        }
        assert!(status_text(&s).contains("line\\u{a}forged"));
        assert_eq!(safe("plain name é"), "plain name é");
    }
}
