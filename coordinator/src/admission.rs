//! Admission control: what a job will hold in the coordinator's memory, and the limits every
//! submit is checked against (one job's memory, all accepted jobs' memory together, active
//! jobs per user and in all). A job is admitted, with its memory reserved, before it is
//! recorded; its reservation ends when it ends. So the coordinator's memory stays bounded
//! whatever mix of jobs users send.

use std::collections::HashMap;
use std::sync::Mutex;

use ctcluster_common::JobId;
use ctcluster_common::dataset::Manifest;
use ctcluster_common::spec::JobSpec;

use crate::error::CoordError;

/// The coordinator's limits on jobs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes one job may hold in coordinator memory.
    pub job_bytes: u64,
    /// Most bytes all unfinished jobs together may hold.
    pub total_bytes: u64,
    /// Most unfinished jobs one user may have.
    pub jobs_per_user: usize,
    /// Most unfinished jobs in all.
    pub active_jobs: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            job_bytes: 4 << 30,
            total_bytes: 12 << 30,
            jobs_per_user: 8,
            active_jobs: 32,
        }
    }
}

/// Bytes the coordinator holds for a job of `num_params` parameters with this spec over this
/// dataset, at its peak:
/// - parameters, the encoded copy workers fetch, and Adam's two moments: 4 vectors;
/// - a checkpoint being encoded (parameters and moments as bytes, sealed copies): 3 more;
/// - the step's results (one gradient a task: ceil(micro-batches / micro_batches_per_task)),
///   at most one vector each: the reduction tree holds at most half of them (subtrees waiting
///   for a sibling, when results come in the worst order; the tree's depth when they come in
///   order), the rest covers results being received and straggler copies, which are dropped on
///   arrival;
/// - the data plan: 32 bytes a sample (references, the epoch's order, validation ids);
/// - with a validation fraction, the largest train shard decoded to read its ids (its stored
///   bytes and its pixels as f32).
pub fn footprint(spec: &JobSpec, manifest: &Manifest, num_params: usize) -> u64 {
    let vector = 4 * num_params as u64;
    let micro_batches = spec.batch_size.div_ceil(spec.micro_batch_size);
    let results = u64::from(micro_batches.div_ceil(spec.micro_batches_per_task));
    let vectors = 4 + 3 + results;
    let samples: u64 = manifest
        .splits
        .values()
        .map(|s| s.rows)
        .fold(0, u64::saturating_add);
    let image = manifest.image;
    let shard_read = if spec.validation.split.is_none() && spec.validation.fraction > 0.0 {
        manifest.splits.get("train").map_or(0, |t| {
            t.shards
                .iter()
                .map(|s| {
                    s.rows
                        .saturating_mul(4 * image.pixels() as u64 + image.bytes() as u64 + 64)
                })
                .max()
                .unwrap_or(0)
        })
    } else {
        0
    };
    vector
        .saturating_mul(vectors)
        .saturating_add(samples.saturating_mul(32))
        .saturating_add(shard_read)
}

/// Bytes in MiB, for messages.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

struct Admitted {
    owner: String,
    bytes: u64,
}

/// The jobs admitted and not yet ended, with their reservations.
#[derive(Default)]
pub struct Admissions {
    jobs: Mutex<HashMap<JobId, Admitted>>,
}

impl Admissions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Admitted>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a new job of `owner` holding `bytes`, or says which limit it would pass.
    pub fn admit(
        &self,
        limits: &Limits,
        job: &JobId,
        owner: &str,
        bytes: u64,
    ) -> Result<(), CoordError> {
        let exhausted = |what, reason| Err(CoordError::ResourceExhausted { what, reason });
        if bytes > limits.job_bytes {
            return exhausted(
                "job memory",
                format!(
                    "the job would hold {} in the coordinator (parameters, Adam state, a step's \
                     gradients, the data plan), more than the {} one job may hold; use a smaller \
                     model or input size, or fewer results a step (a larger micro_batch_size or \
                     micro_batches_per_task)",
                    mib(bytes),
                    mib(limits.job_bytes)
                ),
            );
        }
        let mut jobs = self.lock();
        if jobs.len() >= limits.active_jobs {
            return exhausted(
                "active jobs",
                format!(
                    "the coordinator runs {} unfinished jobs, its limit; submit again when one has ended",
                    jobs.len()
                ),
            );
        }
        let mine = jobs.values().filter(|a| a.owner == owner).count();
        if mine >= limits.jobs_per_user {
            return exhausted(
                "jobs per user",
                format!(
                    "you have {mine} unfinished jobs, the most one user may have; cancel one or \
                     wait for one to end"
                ),
            );
        }
        let held: u64 = jobs.values().map(|a| a.bytes).sum();
        if held.saturating_add(bytes) > limits.total_bytes {
            return exhausted(
                "memory budget",
                format!(
                    "the job would hold {}, and unfinished jobs hold {} of the coordinator's {}; \
                     submit again when one has ended",
                    mib(bytes),
                    mib(held),
                    mib(limits.total_bytes)
                ),
            );
        }
        jobs.insert(
            job.clone(),
            Admitted {
                owner: owner.to_string(),
                bytes,
            },
        );
        Ok(())
    }

    /// Takes in a job admitted before a restart (no limit is applied: it was admitted once).
    pub fn restore(&self, job: &JobId, owner: &str, bytes: u64) {
        self.lock().insert(
            job.clone(),
            Admitted {
                owner: owner.to_string(),
                bytes,
            },
        );
    }

    /// Ends a job's reservation.
    pub fn release(&self, job: &JobId) {
        self.lock().remove(job);
    }

    /// Bytes reserved by unfinished jobs.
    pub fn reserved(&self) -> u64 {
        self.lock().values().map(|a| a.bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn limits() -> Limits {
        Limits {
            job_bytes: 1000,
            total_bytes: 2500,
            jobs_per_user: 2,
            active_jobs: 3,
        }
    }

    fn code(r: Result<(), CoordError>) -> Code {
        tonic::Status::from(r.unwrap_err()).code()
    }

    #[test]
    fn each_limit_refuses_with_resource_exhausted_and_releases_free_room() {
        let a = Admissions::default();
        let l = limits();
        let ids: Vec<JobId> = (0..5).map(|_| JobId::generate()).collect();
        assert_eq!(
            code(a.admit(&l, &ids[0], "alice", 1001)),
            Code::ResourceExhausted
        );
        a.admit(&l, &ids[0], "alice", 1000).unwrap();
        a.admit(&l, &ids[1], "alice", 1000).unwrap();
        let e = a.admit(&l, &ids[2], "alice", 10).unwrap_err().to_string();
        assert!(e.contains("jobs per user"), "{e}");
        // 2000 held: bob's 600 would pass the total of 2500.
        let e = a.admit(&l, &ids[2], "bob", 600).unwrap_err().to_string();
        assert!(e.contains("memory budget") && !e.contains("alice"), "{e}");
        a.admit(&l, &ids[2], "bob", 500).unwrap();
        let e = a.admit(&l, &ids[3], "carol", 0).unwrap_err().to_string();
        assert!(e.contains("active jobs"), "{e}");
        a.release(&ids[0]);
        assert_eq!(a.reserved(), 1500);
        a.admit(&l, &ids[3], "carol", 1000).unwrap();
    }
}
