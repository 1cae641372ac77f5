//! Trying a storage write again when its error says that may help: a store that is briefly
//! unreachable or throttling (`Error::is_retryable`) is given a few tries with growing pauses;
//! bad input, a missing object or refused credentials fail at once.

use std::future::Future;
use std::time::Duration;

use ctcluster_common::Error;

/// Tries in all, the first included.
pub const ATTEMPTS: u32 = 4;
/// The pause after the first failure; it doubles after each.
pub const FIRST_PAUSE: Duration = Duration::from_millis(250);

/// Runs `op` until it succeeds, fails with an error that is not retryable, or has failed
/// [`ATTEMPTS`] times; pauses [`FIRST_PAUSE`], then twice as long each time, in between.
pub async fn with_retries<T, F, Fut>(what: &str, mut op: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let mut pause = FIRST_PAUSE;
    let mut attempt = 1;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() && attempt < ATTEMPTS => {
                tracing::warn!(%what, attempt, error = %e, retry_in = ?pause, "storage write failed; trying again");
                tokio::time::sleep(pause).await;
                pause *= 2;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Under paused time: the pauses take no real time and are measured exactly.

    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn unreachable_store() -> Error {
        Error::Io {
            path: "/state/jobs/job-1.json".into(),
            source: std::io::ErrorKind::ConnectionReset.into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_transient_failure_is_tried_again_with_growing_pauses() {
        let calls = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let out = with_retries("a job record", || async {
            match calls.fetch_add(1, Ordering::Relaxed) {
                0 | 1 => Err(unreachable_store()),
                _ => Ok(7),
            }
        })
        .await;
        assert_eq!(out.unwrap(), 7);
        assert_eq!(calls.load(Ordering::Relaxed), 3);
        assert_eq!(started.elapsed(), FIRST_PAUSE * 3, "250 ms, then 500 ms");
    }

    #[tokio::test(start_paused = true)]
    async fn bad_input_fails_at_once_and_a_lasting_outage_after_the_last_try() {
        let calls = AtomicU32::new(0);
        let out: Result<(), Error> = with_retries("a checkpoint", || async {
            calls.fetch_add(1, Ordering::Relaxed);
            Err(Error::invalid("checkpoint", "too large"))
        })
        .await;
        assert!(out.is_err());
        assert_eq!(calls.load(Ordering::Relaxed), 1, "not retried");

        let calls = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let out: Result<(), Error> = with_retries("a checkpoint", || async {
            calls.fetch_add(1, Ordering::Relaxed);
            Err(unreachable_store())
        })
        .await;
        assert!(out.unwrap_err().is_retryable());
        assert_eq!(calls.load(Ordering::Relaxed), ATTEMPTS);
        assert_eq!(started.elapsed(), FIRST_PAUSE * 7, "250 + 500 + 1000 ms");
    }
}
