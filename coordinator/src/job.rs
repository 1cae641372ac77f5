//! A job held by the coordinator: its spec, its live record, its cancel token, the newest
//! published parameters and its slots for gradients being received.

use std::sync::{Arc, RwLock};

use bytes::Bytes;
use ctcluster_common::JobId;
use ctcluster_common::job::JobRecord;
use ctcluster_common::spec::JobSpec;
use ctcluster_common::tensor_bytes::f32_to_le_bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;

/// Training results with a gradient a job holds at once between the first byte of their body
/// and the moment the reduction tree has folded them: a push beyond that waits for a slot
/// before the coordinator allocates its gradient (and its bytes wait in the connection's flow
/// control window). With the tree's subtree sums waiting for their siblings, this bounds a
/// job's gradient buffers by the tree's depth plus this, whatever the number of micro-batches
/// or workers.
pub const GRADIENTS_IN_FLIGHT: usize = 4;

/// Parameters at one version (the step count), encoded once for every worker that fetches them.
#[derive(Debug)]
pub struct ParamsSnapshot {
    /// The step count these parameters are the result of.
    pub version: u64,
    /// Little-endian f32.
    pub bytes: Bytes,
}

/// One job.
pub struct JobHandle {
    /// Its id.
    pub id: JobId,
    /// Its spec.
    pub spec: JobSpec,
    /// Order of submission, for listing.
    pub seq: u64,
    /// Cancelled by `ctctl cancel`.
    pub cancel: CancellationToken,
    record: watch::Sender<JobRecord>,
    params: RwLock<Option<Arc<ParamsSnapshot>>>,
    gradients: Arc<Semaphore>,
}

impl JobHandle {
    /// A handle for a job with this record.
    pub fn new(spec: JobSpec, record: JobRecord, seq: u64) -> Self {
        JobHandle {
            id: record.id.clone(),
            spec,
            seq,
            cancel: CancellationToken::new(),
            record: watch::Sender::new(record),
            params: RwLock::new(None),
            gradients: Arc::new(Semaphore::new(GRADIENTS_IN_FLIGHT)),
        }
    }

    /// A slot for one gradient being received and folded (see [`GRADIENTS_IN_FLIGHT`]): waits
    /// while every slot is taken; dropping it frees the slot.
    pub async fn gradient_slot(&self) -> OwnedSemaphorePermit {
        // The semaphore is never closed, so acquiring only ever waits.
        Arc::clone(&self.gradients)
            .acquire_owned()
            .await
            .expect("the job's gradient semaphore is never closed")
    }

    /// A copy of the current record.
    pub fn record(&self) -> JobRecord {
        self.record.borrow().clone()
    }

    /// Who submitted the job (without copying the whole record).
    pub fn owner(&self) -> String {
        self.record.borrow().owner.clone()
    }

    /// Changes the record and wakes every watcher.
    pub fn update(&self, f: impl FnOnce(&mut JobRecord)) {
        self.record.send_modify(f);
    }

    /// A receiver that sees every change of the record.
    pub fn subscribe(&self) -> watch::Receiver<JobRecord> {
        self.record.subscribe()
    }

    /// Publishes new parameters.
    pub fn publish_params(&self, version: u64, params: &[f32]) {
        let snap = Arc::new(ParamsSnapshot {
            version,
            bytes: Bytes::from(f32_to_le_bytes(params)),
        });
        *self.params.write().unwrap_or_else(|p| p.into_inner()) = Some(snap);
    }

    /// The newest parameters, if training has started.
    pub fn params(&self) -> Option<Arc<ParamsSnapshot>> {
        self.params
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    #[tokio::test]
    async fn a_job_takes_in_at_most_its_gradients_in_flight() {
        let yaml = "name: t\ndataset: memory://d/x\noutput: memory://d/out\n";
        let spec = JobSpec::from_yaml(yaml).unwrap();
        let id = JobId::generate();
        let job = JobHandle::new(spec, JobRecord::queued(id, "t".into(), yaml.into(), 1), 0);
        let mut held = Vec::new();
        for _ in 0..GRADIENTS_IN_FLIGHT {
            held.push(job.gradient_slot().await);
        }
        assert!(
            job.gradient_slot().now_or_never().is_none(),
            "a push beyond the limit waits"
        );
        held.pop();
        assert!(
            job.gradient_slot().now_or_never().is_some(),
            "a freed slot is taken"
        );
    }
}
