//! The worker service: registration, heartbeats, work, parameters and results.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ctcluster_common::task::{ResultHeader, TaskKind};
use ctcluster_common::telemetry::{TraceCarrier, carrier_to_metadata, child_of_carrier};
use ctcluster_common::tensor_bytes::first_non_finite;
use ctcluster_common::{JobId, TaskId, WorkerId, trace_span};
use ctcluster_proto as pb;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{Principal, principal};
use crate::error::CoordError;
use crate::scheduler::{Expected, TaskResult};
use crate::state::Coordinator;
use crate::workers::Lease;

/// How long `FetchWork` waits for a task before answering "none yet".
const LONG_POLL: Duration = Duration::from_secs(2);

fn worker_id(raw: &str) -> Result<WorkerId, CoordError> {
    raw.parse().map_err(CoordError::from)
}

/// The worker service.
pub struct WorkerApi {
    coord: Arc<Coordinator>,
}

impl WorkerApi {
    /// The service over a coordinator.
    pub fn new(coord: Arc<Coordinator>) -> Self {
        WorkerApi { coord }
    }

    /// The worker a request speaks for, when the caller's certificate is the one that
    /// registered it; renews its lease.
    fn live(&self, raw: &str, caller: &Principal) -> Result<WorkerId, CoordError> {
        let id = worker_id(raw)?;
        match self.coord.workers.touch(id, caller.name()) {
            Lease::Held => Ok(id),
            Lease::Unknown => Err(CoordError::WorkerNotFound(id)),
            Lease::OtherIdentity => Err(CoordError::NotYourWorker(id)),
        }
    }
}

/// Records a failed or refused result in the job's trace (failures are always traced).
fn failure_span(expected: &Expected, task: TaskId, worker: WorkerId, what: &str, error: &str) {
    let span = trace_span!(
        "task_failure",
        otel.name = what,
        otel.status_code = "error",
        job.id = %expected.job,
        step = expected.step.0,
        task = task.0,
        worker.id = %worker,
        error = error,
    );
    child_of_carrier(&span, &expected.failure_trace);
    span.in_scope(|| tracing::warn!(error, "{what}"));
}

type ParamStream = Pin<Box<dyn Stream<Item = Result<pb::TensorChunk, Status>> + Send>>;

#[tonic::async_trait]
impl pb::worker_service_server::WorkerService for WorkerApi {
    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let caller = principal(&req)?;
        let req = req.into_inner();
        if req.protocol_version != pb::PROTOCOL_VERSION {
            return Err(CoordError::ProtocolMismatch {
                worker: req.protocol_version,
                coordinator: pb::PROTOCOL_VERSION,
            }
            .into());
        }
        let name: String = req.name.chars().take(128).collect();
        let device: String = req.device.chars().take(32).collect();
        let id = self
            .coord
            .workers
            .register(name.clone(), device.clone(), caller.name().to_string())
            .ok_or_else(|| CoordError::ResourceExhausted {
                what: "workers",
                reason: format!(
                    "at most {} workers may be registered; silent ones are dropped when their \
                     lease lapses",
                    crate::workers::MAX_WORKERS
                ),
            })?;
        tracing::info!(worker = %id, %name, %device, "worker registered");
        Ok(Response::new(pb::RegisterResponse {
            worker_id: id.to_string(),
            heartbeat_interval_ms: u32::try_from(self.coord.config.heartbeat.as_millis())
                .unwrap_or(u32::MAX),
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let caller = principal(&req)?;
        self.live(&req.into_inner().worker_id, &caller)?;
        Ok(Response::new(pb::HeartbeatResponse {}))
    }

    async fn fetch_work(
        &self,
        req: Request<pb::FetchWorkRequest>,
    ) -> Result<Response<pb::FetchWorkResponse>, Status> {
        let caller = principal(&req)?;
        let id = self.live(&req.into_inner().worker_id, &caller)?;
        let handout = tokio::select! {
            t = self.coord.scheduler.next_for(id, LONG_POLL) => t,
            _ = self.coord.shutdown.cancelled() => None,
        };
        let mut trace = TraceCarrier::new();
        let task = handout.map(|h| {
            if h.reissued {
                tracing::info!(task = %h.task.id, worker = %id, job = %h.job, "straggling task re-issued");
                if let Ok(job) = self.coord.job(&h.job) {
                    job.update(|r| r.reissued_tasks += 1);
                }
            }
            trace = h.trace;
            pb::Task::from(&h.task)
        });
        let mut response = Response::new(pb::FetchWorkResponse { task });
        carrier_to_metadata(&trace, response.metadata_mut());
        Ok(response)
    }

    type FetchParametersStream = ParamStream;

    async fn fetch_parameters(
        &self,
        req: Request<pb::FetchParametersRequest>,
    ) -> Result<Response<Self::FetchParametersStream>, Status> {
        let req = req.into_inner();
        let job = self
            .coord
            .job(&JobId::try_from(req.job_id).map_err(CoordError::from)?)?;
        let snap = job
            .params()
            .ok_or_else(|| CoordError::Stale("the job has not published parameters yet".into()))?;
        if snap.version != req.version {
            return Err(CoordError::Stale(format!(
                "parameters of step {} asked for, the job is at step {}",
                req.version, snap.version
            ))
            .into());
        }
        let total = (snap.bytes.len() / 4) as u64;
        let chunks: Vec<Result<pb::TensorChunk, Status>> = (0..snap.bytes.len())
            .step_by(pb::CHUNK_BYTES)
            .map(|start| {
                let end = (start + pb::CHUNK_BYTES).min(snap.bytes.len());
                Ok(pb::TensorChunk {
                    offset: (start / 4) as u64,
                    total,
                    data: snap.bytes.slice(start..end),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    async fn push_result(
        &self,
        req: Request<Streaming<pb::ResultChunk>>,
    ) -> Result<Response<pb::PushResultResponse>, Status> {
        let caller = principal(&req)?;
        let mut stream = req.into_inner();
        let raw = match stream.next().await {
            Some(Ok(pb::ResultChunk {
                part: Some(pb::result_chunk::Part::Header(h)),
            })) => h,
            Some(Err(e)) => return Err(e),
            _ => {
                return Err(CoordError::bad(
                    "header",
                    "the first message must be the result header",
                )
                .into());
            }
        };
        let worker = self.live(&raw.worker_id, &caller)?;
        let task = TaskId(raw.task_id);
        let Some(expected) = self.coord.scheduler.expected(task, worker) else {
            tracing::debug!(%task, %worker, "result for a task no longer outstanding; discarded");
            return Ok(Response::new(pb::PushResultResponse { accepted: false }));
        };
        let reject = |reason: String| {
            failure_span(&expected, task, worker, "result_rejected", &reason);
            tracing::warn!(%task, %worker, job = %expected.job, %reason, "result rejected; task re-queued");
            self.coord
                .scheduler
                .retry(task, worker, &reason, self.coord.workers.count());
            if let Ok(job) = self.coord.job(&expected.job) {
                job.update(|r| r.rejected_results += 1);
            }
            Status::from(CoordError::bad("result", reason))
        };
        let header = ResultHeader::try_from(raw).map_err(|e| reject(e.to_string()))?;
        if let Some(failure) = header.failure {
            let error = failure.message.as_str();
            failure_span(&expected, task, worker, "task_failed", error);
            tracing::warn!(%task, %worker, job = %expected.job, kind = ?failure.kind, %error, "worker could not compute a task");
            self.coord
                .scheduler
                .fail(task, worker, failure, self.coord.workers.count());
            return Ok(Response::new(pb::PushResultResponse { accepted: false }));
        }
        if header.job != expected.job || header.step != expected.step {
            return Err(reject(format!(
                "result for job {} step {}, but the task is job {} step {}",
                header.job, header.step.0, expected.job, expected.step.0
            )));
        }
        if header.gradient_len != expected.gradient_len || header.samples != expected.samples {
            return Err(reject(format!(
                "{} gradient values over {} samples, expected {} over {}",
                header.gradient_len, header.samples, expected.gradient_len, expected.samples
            )));
        }
        if expected.gradient_len > 0 && header.gradient_dtype != expected.gradient_dtype {
            return Err(reject(format!(
                "a {} gradient, but the task asked for {}",
                header.gradient_dtype, expected.gradient_dtype
            )));
        }
        if !header.loss_sum.is_finite() || header.correct > header.samples {
            return Err(reject(format!(
                "loss {} / correct {} out of range",
                header.loss_sum, header.correct
            )));
        }
        // An evaluation task's outputs must fit the model and agree with its counts; a
        // training result carries none.
        let outputs_ok = if expected.kind == TaskKind::Eval {
            match expected.classes {
                Some(classes) => header.check_eval_outputs(classes),
                None => Err("an evaluation task of a model whose classes are unknown".into()),
            }
        } else if header.confusion.is_empty() && header.probs.is_empty() && header.labels.is_empty()
        {
            Ok(())
        } else {
            Err("a training result with evaluation outputs".to_string())
        };
        if let Err(reason) = outputs_ok {
            return Err(reject(reason));
        }
        let want = usize::try_from(expected.gradient_len)
            .map_err(|_| reject("gradient too long".into()))?;
        let dtype = expected.gradient_dtype;
        // Wait for one of the job's gradient slots before taking the body in: what the
        // coordinator holds of a step does not grow with the pushes arriving at once.
        let slot = match (want, self.coord.job(&expected.job)) {
            (0, _) | (_, Err(_)) => None,
            (_, Ok(job)) => Some(job.gradient_slot().await),
        };
        let mut gradient = Vec::with_capacity(want);
        while let Some(msg) = stream.next().await {
            match msg?.part {
                Some(pb::result_chunk::Part::Gradient(bytes)) => {
                    if gradient.len() + bytes.len() / dtype.bytes_per_value() > want {
                        return Err(reject(format!(
                            "more than the {want} gradient values announced"
                        )));
                    }
                    dtype
                        .extend_decoded(&mut gradient, &bytes, "gradient")
                        .map_err(|e| reject(e.to_string()))?;
                }
                _ => return Err(reject("a second header in one result".into())),
            }
        }
        if gradient.len() != want {
            return Err(reject(format!(
                "{} gradient values, expected {want}",
                gradient.len()
            )));
        }
        if let Some(i) = first_non_finite(&gradient) {
            return Err(reject(format!(
                "gradient value {i} is {} (NaN or infinite)",
                gradient[i]
            )));
        }
        let total = expected.handed_out.elapsed().as_secs_f64();
        let accepted = self.coord.scheduler.complete(TaskResult {
            task,
            worker,
            samples: header.samples,
            loss_sum: header.loss_sum,
            correct: header.correct,
            gradient,
            confusion: header.confusion,
            probs: header.probs,
            labels: header.labels,
            slot,
        });
        if accepted {
            let (fetch, compute) = (header.fetch_seconds, header.compute_seconds);
            if fetch.is_finite() && compute.is_finite() && fetch >= 0.0 && compute >= 0.0 {
                self.coord
                    .workers
                    .record(worker, header.samples, fetch, compute, total);
            }
        }
        Ok(Response::new(pb::PushResultResponse { accepted }))
    }

    async fn goodbye(
        &self,
        req: Request<pb::GoodbyeRequest>,
    ) -> Result<Response<pb::GoodbyeResponse>, Status> {
        let caller = principal(&req)?;
        let id = worker_id(&req.into_inner().worker_id)?;
        match self.coord.workers.remove(id, caller.name()) {
            Lease::Held => {
                let n = self.coord.release_worker(id);
                tracing::info!(worker = %id, requeued = n, "worker said goodbye");
            }
            Lease::Unknown => {}
            Lease::OtherIdentity => return Err(CoordError::NotYourWorker(id).into()),
        }
        Ok(Response::new(pb::GoodbyeResponse {}))
    }
}
