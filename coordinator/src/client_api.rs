//! The client service (`ctctl`'s side): submit, get, list, cancel, watch.

use std::pin::Pin;
use std::sync::Arc;

use ctcluster_common::job::{JobRecord, Metrics};
use ctcluster_common::telemetry::carrier_from_metadata;
use ctcluster_common::{JobId, WorkerId};
use ctcluster_proto as pb;
use futures::Stream;
use tonic::{Request, Response, Status};

use crate::auth::{Principal, principal};
use crate::error::CoordError;
use crate::job::JobHandle;
use crate::state::Coordinator;
use crate::workers::{WorkerEntry, slowest};

/// Converts a job record to its wire form.
pub fn record_to_proto(r: &JobRecord) -> pb::JobStatus {
    pb::JobStatus {
        id: r.id.to_string(),
        name: r.name.clone(),
        state: pb::JobState::from(r.state) as i32,
        message: r.message.clone(),
        epoch: r.epoch,
        epochs: r.epochs,
        step: r.step,
        total_steps: r.total_steps,
        metrics: Some(metrics_to_proto(&r.metrics)),
        checkpoint: r.checkpoint.clone().unwrap_or_default(),
        model: r.model.clone().unwrap_or_default(),
        evaluation: r.evaluation.clone().unwrap_or_default(),
        images_per_sec: r.images_per_sec,
        eta_seconds: r.eta_seconds,
        workers: r.workers,
        rejected_results: r.rejected_results,
        reissued_tasks: r.reissued_tasks,
        requeued_tasks: r.requeued_tasks,
        resumes: r.resumes,
        resumed_from_step: r.resumed_from_step,
        slowest_worker: String::new(),
        slowest_reason: String::new(),
        owner: r.owner.clone(),
    }
}

fn metrics_to_proto(m: &Metrics) -> pb::JobMetrics {
    pb::JobMetrics {
        train_loss: m.train_loss,
        val_loss: m.val_loss,
        val_accuracy: m.val_accuracy,
        train_accuracy: m.train_accuracy,
        val_auc: m.val_auc,
    }
}

/// Converts a job record to the report `ctctl report` draws.
pub fn record_to_report(r: &JobRecord) -> pb::JobReport {
    pb::JobReport {
        status: Some(record_to_proto(r)),
        history: r
            .history
            .iter()
            .map(|h| pb::EpochPoint {
                epoch: h.epoch,
                step: h.step,
                metrics: Some(metrics_to_proto(&h.metrics)),
            })
            .collect(),
        loss_curve: r
            .loss_curve
            .points
            .iter()
            .map(|&(step, loss)| pb::LossPoint { step, loss })
            .collect(),
        classes: r.classes.clone(),
        val_confusion: r.val_confusion.iter().flatten().copied().collect(),
    }
}

/// Workers as a caller may see them: admins see everything; users see each worker's id,
/// device and timings, not its host name or the certificate it registered with.
fn visible_workers(
    who: &Principal,
    mut workers: Vec<(WorkerId, WorkerEntry)>,
) -> Vec<(WorkerId, WorkerEntry)> {
    if !who.is_admin() {
        for (_, w) in &mut workers {
            w.name = "(hidden)".into();
            w.identity.clear();
        }
    }
    workers
}

fn job_id(raw: String) -> Result<JobId, CoordError> {
    JobId::try_from(raw).map_err(CoordError::from)
}

/// The client service.
pub struct ClientApi {
    coord: Arc<Coordinator>,
}

impl ClientApi {
    /// The service over a coordinator.
    pub fn new(coord: Arc<Coordinator>) -> Self {
        ClientApi { coord }
    }

    /// A job the caller may see: its owner, or an admin.
    fn visible_job<T>(&self, req: &Request<T>, raw_id: &str) -> Result<Arc<JobHandle>, Status> {
        let who = principal(req)?;
        let job = self.coord.job(&job_id(raw_id.to_string())?)?;
        let owner = job.owner();
        if !who.may_access(&owner) {
            return Err(Status::permission_denied(format!(
                "job {} belongs to another user",
                job.id
            )));
        }
        Ok(job)
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::JobStatus, Status>> + Send>>;

#[tonic::async_trait]
impl pb::client_service_server::ClientService for ClientApi {
    async fn submit(
        &self,
        req: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        let trace = carrier_from_metadata(req.metadata());
        let owner = principal(&req)?;
        let id = self
            .coord
            .submit(&req.into_inner().spec_yaml, trace, &owner)
            .await?;
        Ok(Response::new(pb::SubmitResponse {
            job_id: id.to_string(),
        }))
    }

    async fn get_job(
        &self,
        req: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::JobStatus>, Status> {
        let job = self.visible_job(&req, &req.get_ref().job_id)?;
        let mut status = record_to_proto(&job.record());
        let workers = visible_workers(&principal(&req)?, self.coord.workers.snapshot());
        if let Some((who, why)) = slowest(&workers) {
            status.slowest_worker = who;
            status.slowest_reason = why;
        }
        Ok(Response::new(status))
    }

    async fn get_job_report(
        &self,
        req: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::JobReport>, Status> {
        let job = self.visible_job(&req, &req.get_ref().job_id)?;
        Ok(Response::new(record_to_report(&job.record())))
    }

    async fn list_workers(
        &self,
        req: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let who = principal(&req)?;
        let snapshot = visible_workers(&who, self.coord.workers.snapshot());
        let (slowest_worker, slowest_reason) = slowest(&snapshot).unwrap_or_default();
        let workers = snapshot
            .into_iter()
            .map(|(id, w)| pb::WorkerStatus {
                id: id.to_string(),
                name: w.name,
                device: w.device,
                last_seen_ms: u64::try_from(w.last_seen.elapsed().as_millis()).unwrap_or(u64::MAX),
                tasks: w.stats.tasks,
                images_per_sec: w.stats.images_per_sec.value(),
                fetch_seconds: w.stats.fetch.value(),
                compute_seconds: w.stats.compute.value(),
                network_seconds: w.stats.network.value(),
            })
            .collect();
        Ok(Response::new(pb::ListWorkersResponse {
            workers,
            slowest_worker,
            slowest_reason,
        }))
    }

    async fn list_jobs(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let who = principal(&req)?;
        let jobs = self
            .coord
            .list()
            .iter()
            .map(|j| j.record())
            .filter(|r| who.may_access(&r.owner))
            .map(|r| record_to_proto(&r))
            .collect();
        Ok(Response::new(pb::ListJobsResponse { jobs }))
    }

    async fn cancel_job(
        &self,
        req: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::JobStatus>, Status> {
        let job = self.visible_job(&req, &req.get_ref().job_id)?;
        let job = self.coord.cancel(&job.id)?;
        Ok(Response::new(record_to_proto(&job.record())))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let job = self.visible_job(&req, &req.get_ref().job_id)?;
        let rx = job.subscribe();
        let shutdown = self.coord.shutdown.clone();
        // Sends the current record, then every change, and ends after a terminal state.
        let stream = futures::stream::unfold((rx, true, false), move |(mut rx, first, done)| {
            let shutdown = shutdown.clone();
            async move {
                if done {
                    return None;
                }
                if !first {
                    tokio::select! {
                        r = rx.changed() => if r.is_err() { return None },
                        _ = shutdown.cancelled() => return None,
                    }
                }
                let rec = rx.borrow_and_update().clone();
                let terminal = rec.state.is_terminal();
                Some((Ok(record_to_proto(&rec)), (rx, false, terminal)))
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
