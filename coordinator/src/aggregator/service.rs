//! The aggregator's gRPC service: shards installed, stepped and read by the coordinator,
//! parameters fetched and gradient shards pushed by workers.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ctcluster_common::dtype::GradientDtype;
use ctcluster_common::optim::AdamSnapshot;
use ctcluster_common::spec::AdamSpec;
use ctcluster_common::tensor_bytes::{extend_f32_from_le_bytes, f32_to_le_bytes, first_non_finite};
use ctcluster_common::{JobId, WorkerId};
use ctcluster_proto as pb;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::shard::{Pushed, Shard, ShardInit};
use crate::auth::principal;
use crate::error::CoordError;

/// Most jobs one aggregator holds shards of.
pub const MAX_JOBS: usize = 256;
/// Most parameters one aggregator holds over all its shards (each costs three f32: the value
/// and Adam's two moments, plus what the step's fold holds).
pub const MAX_PARAMS_HELD: u64 = 1 << 30;

type Chunks<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The aggregator's shards, by job.
pub struct AggregatorApi {
    incarnation: String,
    /// With TLS: the certificate name that may steer shards (install, step, read, drop,
    /// status); other certificates of the cluster CA (workers) only fetch and push. `None`
    /// (plain text): every caller may.
    steering: Option<String>,
    shards: Mutex<HashMap<JobId, Arc<Mutex<Shard>>>>,
}

impl AggregatorApi {
    /// An aggregator holding nothing, with a fresh incarnation id; `steering` as the field.
    pub fn new(steering: Option<String>) -> Self {
        AggregatorApi {
            steering,
            incarnation: uuid::Uuid::new_v4().simple().to_string(),
            shards: Mutex::new(HashMap::new()),
        }
    }

    /// Refuses a steering call from anybody but the coordinator (with TLS).
    fn steer<T>(&self, req: &Request<T>, what: &str) -> Result<(), Status> {
        let Some(coordinator) = &self.steering else {
            return Ok(());
        };
        let caller = principal(req)?;
        if caller.name() == coordinator {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "{what}: only the coordinator's certificate ({coordinator:?}) may steer shards; \
             {:?} may fetch parameters and push gradients",
            caller.name()
        )))
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Arc<Mutex<Shard>>>> {
        self.shards.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn shard(&self, job: &str) -> Result<Arc<Mutex<Shard>>, CoordError> {
        let id = JobId::try_from(job.to_string())?;
        self.table()
            .get(&id)
            .cloned()
            .ok_or(CoordError::JobNotFound(id))
    }
}

fn lock(shard: &Mutex<Shard>) -> std::sync::MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `f` on the shard off the async threads (folds and Adam touch every value).
async fn blocking<T: Send + 'static>(
    shard: Arc<Mutex<Shard>>,
    f: impl FnOnce(&mut Shard) -> Result<T, CoordError> + Send + 'static,
) -> Result<T, CoordError> {
    tokio::task::spawn_blocking(move || f(&mut lock(&shard)))
        .await
        .map_err(|e| CoordError::Internal(format!("aggregator task panicked: {e}")))?
}

/// Chunks of little-endian bytes as stream messages, each a whole number of f32.
fn chunked<T>(bytes: &Bytes, wrap: impl Fn(Bytes) -> T) -> Vec<T> {
    (0..bytes.len())
        .step_by(pb::CHUNK_BYTES)
        .map(|start| {
            let end = (start + pb::CHUNK_BYTES).min(bytes.len());
            wrap(bytes.slice(start..end))
        })
        .collect()
}

/// Reads a shard's state from a stream: its header, then the parameters, then the moments.
async fn read_load(stream: &mut Streaming<pb::ShardData>) -> Result<(JobId, ShardInit), Status> {
    let header = match stream.next().await {
        Some(Ok(pb::ShardData {
            part: Some(pb::shard_data::Part::Header(h)),
        })) => h,
        Some(Err(e)) => return Err(e),
        _ => {
            return Err(
                CoordError::bad("header", "the first message must be the shard header").into(),
            );
        }
    };
    let job = JobId::try_from(header.job_id).map_err(CoordError::from)?;
    let n = usize::try_from(header.len)
        .ok()
        .filter(|&n| n > 0 && n as u64 <= MAX_PARAMS_HELD)
        .ok_or_else(|| CoordError::bad("len", format!("{} parameters", header.len)))?;
    let optimizer: AdamSpec = serde_json::from_str(&header.optimizer_json)
        .map_err(|e| CoordError::bad("optimizer_json", e.to_string()))?;
    let moments = if header.adam_time > 0 { n } else { 0 };
    let (mut params, mut m1, mut m2) = (
        Vec::with_capacity(n),
        Vec::with_capacity(moments),
        Vec::with_capacity(moments),
    );
    while let Some(msg) = stream.next().await {
        let (out, want, what) = match msg?.part {
            Some(pb::shard_data::Part::Params(b)) => ((&mut params, b), n, "params"),
            Some(pb::shard_data::Part::Moment1(b)) => ((&mut m1, b), moments, "moment_1"),
            Some(pb::shard_data::Part::Moment2(b)) => ((&mut m2, b), moments, "moment_2"),
            _ => return Err(CoordError::bad("shard", "a second header").into()),
        };
        let (vec, bytes) = out;
        if vec.len() + bytes.len() / 4 > want {
            return Err(CoordError::bad(what, format!("more than {want} values")).into());
        }
        extend_f32_from_le_bytes(vec, &bytes, what).map_err(CoordError::from)?;
    }
    if params.len() != n || m1.len() != moments || m2.len() != moments {
        return Err(CoordError::bad(
            "shard",
            format!(
                "{} parameters and {} / {} moment values, expected {n} and {moments}",
                params.len(),
                m1.len(),
                m2.len()
            ),
        )
        .into());
    }
    Ok((
        job,
        ShardInit {
            offset: header.offset,
            version: header.version,
            params,
            optimizer,
            adam: AdamSnapshot {
                time: header.adam_time,
                moment_1: m1,
                moment_2: m2,
            },
        },
    ))
}

#[tonic::async_trait]
impl pb::aggregator_service_server::AggregatorService for AggregatorApi {
    async fn load_shard(
        &self,
        req: Request<Streaming<pb::ShardData>>,
    ) -> Result<Response<pb::LoadShardResponse>, Status> {
        self.steer(&req, "LoadShard")?;
        let mut stream = req.into_inner();
        let (job, init) = read_load(&mut stream).await?;
        let n = init.params.len() as u64;
        let shard = tokio::task::spawn_blocking(move || Shard::new(init))
            .await
            .map_err(|e| CoordError::Internal(format!("aggregator task panicked: {e}")))??;
        let mut table = self.table();
        let held: u64 = table
            .iter()
            .filter(|(id, _)| **id != job)
            .map(|(_, s)| lock(s).range().1)
            .sum();
        if held + n > MAX_PARAMS_HELD || (table.len() >= MAX_JOBS && !table.contains_key(&job)) {
            return Err(CoordError::ResourceExhausted {
                what: "aggregator",
                reason: format!(
                    "holds {held} parameters of {} jobs; another {n} would pass its limit of \
                     {MAX_PARAMS_HELD} parameters or {MAX_JOBS} jobs",
                    table.len()
                ),
            }
            .into());
        }
        tracing::info!(%job, params = n, "shard loaded");
        table.insert(job, Arc::new(Mutex::new(shard)));
        Ok(Response::new(pb::LoadShardResponse {
            incarnation: self.incarnation.clone(),
        }))
    }

    type ReadShardStream = Chunks<pb::ShardData>;

    async fn read_shard(
        &self,
        req: Request<pb::ReadShardRequest>,
    ) -> Result<Response<Self::ReadShardStream>, Status> {
        self.steer(&req, "ReadShard")?;
        let req = req.into_inner();
        let shard = self.shard(&req.job_id)?;
        let version = req.version;
        let (params, adam, offset) = blocking(shard, move |s| {
            let (p, a) = s.read(version)?;
            Ok((p, a, s.range().0))
        })
        .await?;
        let header = pb::ShardHeader {
            job_id: req.job_id,
            offset,
            len: params.len() as u64,
            version,
            adam_time: adam.time,
            optimizer_json: String::new(),
        };
        let (p, m1, m2) = (
            Bytes::from(f32_to_le_bytes(&params)),
            Bytes::from(f32_to_le_bytes(&adam.moment_1)),
            Bytes::from(f32_to_le_bytes(&adam.moment_2)),
        );
        let part = |p: pb::shard_data::Part| -> Result<pb::ShardData, Status> {
            Ok(pb::ShardData { part: Some(p) })
        };
        let mut msgs = vec![part(pb::shard_data::Part::Header(header))];
        msgs.extend(chunked(&p, |b| part(pb::shard_data::Part::Params(b))));
        msgs.extend(chunked(&m1, |b| part(pb::shard_data::Part::Moment1(b))));
        msgs.extend(chunked(&m2, |b| part(pb::shard_data::Part::Moment2(b))));
        Ok(Response::new(Box::pin(futures::stream::iter(msgs))))
    }

    async fn apply_step(
        &self,
        req: Request<pb::ApplyStepRequest>,
    ) -> Result<Response<pb::ApplyStepResponse>, Status> {
        self.steer(&req, "ApplyStep")?;
        let req = req.into_inner();
        let shard = self.shard(&req.job_id)?;
        blocking(shard, move |s| s.apply(req.step, req.leaves, req.batch)).await?;
        Ok(Response::new(pb::ApplyStepResponse {}))
    }

    async fn drop_shard(
        &self,
        req: Request<pb::DropShardRequest>,
    ) -> Result<Response<pb::DropShardResponse>, Status> {
        self.steer(&req, "DropShard")?;
        let id = JobId::try_from(req.into_inner().job_id).map_err(CoordError::from)?;
        self.table().remove(&id);
        Ok(Response::new(pb::DropShardResponse {}))
    }

    async fn aggregator_status(
        &self,
        req: Request<pb::AggregatorStatusRequest>,
    ) -> Result<Response<pb::AggregatorStatusResponse>, Status> {
        self.steer(&req, "AggregatorStatus")?;
        let req = req.into_inner();
        let version = match self.shard(&req.job_id) {
            Ok(s) => Some(lock(&s).version()),
            Err(CoordError::JobNotFound(_)) => None,
            Err(e) => return Err(e.into()),
        };
        Ok(Response::new(pb::AggregatorStatusResponse {
            incarnation: self.incarnation.clone(),
            loaded: version.is_some(),
            version: version.unwrap_or(0),
        }))
    }

    type FetchShardStream = Chunks<pb::TensorChunk>;

    async fn fetch_shard(
        &self,
        req: Request<pb::FetchParametersRequest>,
    ) -> Result<Response<Self::FetchShardStream>, Status> {
        principal(&req)?;
        let req = req.into_inner();
        let shard = self.shard(&req.job_id)?;
        let bytes = lock(&shard).serve(req.version)?;
        let total = (bytes.len() / 4) as u64;
        let chunks: Vec<Result<pb::TensorChunk, Status>> = (0..bytes.len())
            .step_by(pb::CHUNK_BYTES)
            .map(|start| {
                let end = (start + pb::CHUNK_BYTES).min(bytes.len());
                Ok(pb::TensorChunk {
                    offset: (start / 4) as u64,
                    total,
                    data: bytes.slice(start..end),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    async fn push_shard(
        &self,
        req: Request<Streaming<pb::ShardPushChunk>>,
    ) -> Result<Response<pb::PushResultResponse>, Status> {
        principal(&req)?;
        let mut stream = req.into_inner();
        let h = match stream.next().await {
            Some(Ok(pb::ShardPushChunk {
                part: Some(pb::shard_push_chunk::Part::Header(h)),
            })) => h,
            Some(Err(e)) => return Err(e),
            _ => {
                return Err(
                    CoordError::bad("header", "the first message must be the push header").into(),
                );
            }
        };
        let worker: WorkerId = h.worker_id.parse().map_err(CoordError::from)?;
        let shard = self.shard(&h.job_id)?;
        let (offset, len) = lock(&shard).range();
        if (h.offset, h.len) != (offset, len) {
            return Err(CoordError::bad(
                "range",
                format!(
                    "a gradient of {}..+{}, this aggregator holds {offset}..+{len}",
                    h.offset, h.len
                ),
            )
            .into());
        }
        let dtype = GradientDtype::try_from(h.gradient_dtype).map_err(CoordError::from)?;
        let want = len as usize;
        let mut grad = Vec::with_capacity(want);
        while let Some(msg) = stream.next().await {
            match msg?.part {
                Some(pb::shard_push_chunk::Part::Gradient(bytes)) => {
                    if grad.len() + bytes.len() / dtype.bytes_per_value() > want {
                        return Err(CoordError::bad(
                            "gradient",
                            format!("more than the {want} values announced"),
                        )
                        .into());
                    }
                    dtype
                        .extend_decoded(&mut grad, &bytes, "gradient")
                        .map_err(CoordError::from)?;
                }
                _ => return Err(CoordError::bad("gradient", "a second header").into()),
            }
        }
        if grad.len() != want {
            return Err(CoordError::bad(
                "gradient",
                format!("{} values, expected {want}", grad.len()),
            )
            .into());
        }
        if let Some(i) = first_non_finite(&grad) {
            return Err(CoordError::bad(
                "gradient",
                format!(
                    "value {} is {} (NaN or infinite)",
                    offset + i as u64,
                    grad[i]
                ),
            )
            .into());
        }
        let (step, first, count, leaves) = (h.step, h.block_first, h.block_count, h.step_leaves);
        let pushed = blocking(shard, move |s| s.push(step, first, count, leaves, grad)).await?;
        if pushed == Pushed::Duplicate {
            tracing::debug!(%worker, step, block = first, "gradient shard already in; ignored");
        }
        Ok(Response::new(pb::PushResultResponse {
            accepted: pushed == Pushed::Folded,
        }))
    }
}
