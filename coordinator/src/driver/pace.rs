//! Pacing: waiting for enough workers, and measuring throughput.

use std::time::Duration;

use ctcluster_common::job::JobState;

use crate::ewma::Ewma;

use super::run::Stop;
use crate::job::JobHandle;
use crate::state::Coordinator;

/// Holds the job in `waiting` while fewer than `min_workers` workers are registered; ends
/// with [`Stop::Shutdown`] when the coordinator stops meanwhile.
pub(super) async fn wait_for_workers(coord: &Coordinator, job: &JobHandle) -> Result<(), Stop> {
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
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
            () = coord.shutdown.cancelled() => return Err(Stop::Shutdown),
        }
    }
    if waiting {
        job.update(|r| {
            r.state = JobState::Running;
            r.message.clear();
        });
    }
    Ok(())
}

/// Images per second over the recent steps, and the ETA it implies.
#[derive(Default)]
pub(super) struct RateMeter {
    step_seconds: Ewma,
    images_per_sec: Ewma,
}

impl RateMeter {
    pub(super) fn record(&mut self, images: u64, seconds: f64) -> f64 {
        let seconds = seconds.max(1e-9);
        self.step_seconds.add(seconds);
        self.images_per_sec.add(images as f64 / seconds)
    }

    pub(super) fn eta(&self, steps_left: u64) -> f64 {
        self.step_seconds.value() * steps_left as f64
    }
}
