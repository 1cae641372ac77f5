//! `ctctl watch`: a live progress bar (epoch, step, loss, accuracy, images/s, ETA) until the job
//! ends. If the coordinator goes away it keeps trying to reconnect for a minute.

use std::time::{Duration, Instant};

use ctcluster_proto as pb;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};

use crate::CtlError;
use crate::connect::{Target, connect};
use crate::render::{StatusJson, is_terminal, state_name};

fn message(s: &pb::JobStatus) -> String {
    let j = StatusJson::from(s);
    let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
    format!(
        "epoch {}/{} loss {} val_acc {} {:.0} img/s eta {:.0}s",
        (j.epoch + 1).min(j.epochs.max(1)),
        j.epochs,
        f(j.metrics.train_loss),
        f(j.metrics.val_accuracy),
        j.images_per_sec,
        j.eta_seconds
    )
}

/// Follows a job until it ends; returns its final status.
pub async fn watch(coordinator: &Target, job: &str) -> Result<pb::JobStatus, CtlError> {
    follow(coordinator, job, false).await
}

/// [`watch`], with the progress lines (printed when standard error is not a terminal) going
/// to standard error, for commands whose standard output is a document (`evaluate -o json`).
pub async fn watch_to_stderr(coordinator: &Target, job: &str) -> Result<pb::JobStatus, CtlError> {
    follow(coordinator, job, true).await
}

async fn follow(
    coordinator: &Target,
    job: &str,
    lines_to_stderr: bool,
) -> Result<pb::JobStatus, CtlError> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} steps  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let plain = bar.is_hidden();
    let mut last_line = Instant::now() - Duration::from_secs(60);
    let mut last_epoch = u32::MAX;
    let mut lost_since: Option<Instant> = None;
    loop {
        let stream = async {
            let mut c = connect(coordinator).await?;
            Ok::<_, CtlError>(
                c.watch(pb::WatchRequest {
                    job_id: job.to_string(),
                })
                .await?
                .into_inner(),
            )
        };
        let mut stream = match stream.await {
            Ok(s) => s,
            Err(e @ CtlError::Connect { .. }) => {
                let since = *lost_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(60) {
                    return Err(e);
                }
                bar.set_message("coordinator unreachable; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(CtlError::Rpc(s)) if s.code() == tonic::Code::Unavailable => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        lost_since = None;
        while let Some(item) = stream.next().await {
            let Ok(s) = item else { break };
            bar.set_length(s.total_steps);
            bar.set_position(s.step);
            bar.set_message(message(&s));
            if plain
                && (s.epoch != last_epoch
                    || last_line.elapsed() > Duration::from_secs(10)
                    || is_terminal(s.state))
            {
                let line = format!(
                    "{} step {}/{} {}",
                    state_name(s.state),
                    s.step,
                    s.total_steps,
                    message(&s)
                );
                if lines_to_stderr {
                    eprintln!("{line}");
                } else {
                    println!("{line}");
                }
                last_line = Instant::now();
                last_epoch = s.epoch;
            }
            if is_terminal(s.state) {
                bar.finish_and_clear();
                return Ok(s);
            }
        }
        // The stream ended without a terminal state: the coordinator went away. Reconnect.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
