//! A job held by the coordinator: its spec, its live record, its cancel token and the newest
//! published parameters.

use std::sync::{Arc, RwLock};

use bytes::Bytes;
use ctcluster_common::JobId;
use ctcluster_common::job::JobRecord;
use ctcluster_common::spec::JobSpec;
use ctcluster_common::tensor_bytes::f32_to_le_bytes;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

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
        }
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
