//! Sharded aggregation, the worker's side: a training task's parameters come from its job's
//! aggregators, each its range, and its gradient goes back to them the same way; the
//! coordinator then gets the result without a gradient. Calls to an aggregator that does not
//! answer are tried again for a few seconds (a restarting aggregator, a busy one) before the
//! task is reported failed.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use ctcluster_common::WorkerId;
use ctcluster_common::dtype::GradientDtype;
use ctcluster_common::shards::ShardRoute;
use ctcluster_common::task::Task;
use ctcluster_common::tensor_bytes::extend_f32_from_le_bytes;
use ctcluster_proto as pb;
use futures::StreamExt;
use futures::future::try_join_all;
use pb::aggregator_service_client::AggregatorServiceClient;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::WorkerError;

type Client = AggregatorServiceClient<Channel>;

/// Tries of one call to an aggregator that does not answer, and the wait before the first
/// retry (doubling, at most a second): about eight seconds in all.
const TRIES: u32 = 10;
const FIRST_WAIT: Duration = Duration::from_millis(100);

/// Connections to the aggregators this worker has used, by URL.
pub struct Aggregators {
    clients: HashMap<String, Client>,
    /// The worker's TLS (as with the coordinator); `None`: plain text.
    tls: Option<ClientTlsConfig>,
}

fn failed(url: &str, reason: impl std::fmt::Display) -> WorkerError {
    WorkerError::Aggregator {
        url: url.to_string(),
        reason: reason.to_string(),
    }
}

/// Whether a failed call may pass if made again soon: the aggregator is not answering (yet),
/// or has restarted and does not hold the job until the coordinator installs it again; as
/// opposed to refusing the call (a stale step, a bad gradient).
fn transient(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::DeadlineExceeded
            | tonic::Code::NotFound
    )
}

/// Makes `call` until it succeeds, fails for good, or [`TRIES`] are spent.
async fn with_retries<T, F, Fut>(url: &str, mut call: F) -> Result<T, WorkerError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let mut wait = FIRST_WAIT;
    let mut tries = 0;
    loop {
        tries += 1;
        match call().await {
            Ok(v) => return Ok(v),
            Err(s) if transient(&s) && tries < TRIES => {
                tracing::debug!(aggregator = url, error = %s.message(), "aggregator call failed; trying again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(1));
            }
            Err(s) => return Err(failed(url, s.message())),
        }
    }
}

impl Aggregators {
    /// No connections yet; `tls` is the worker's TLS, with which it talks to aggregators too.
    pub fn new(tls: Option<ClientTlsConfig>) -> Self {
        Aggregators {
            clients: HashMap::new(),
            tls,
        }
    }

    /// The client for `url`, connecting lazily on first use. A worker with TLS talks to
    /// `https://` aggregators only, one without to `http://` ones only: gradients never leave
    /// a TLS worker in plain text.
    fn client(&mut self, url: &str) -> Result<Client, WorkerError> {
        if let Some(c) = self.clients.get(url) {
            return Ok(c.clone());
        }
        let scheme = if self.tls.is_some() {
            "https://"
        } else {
            "http://"
        };
        if !url.starts_with(scheme) {
            return Err(failed(
                url,
                format!(
                    "this worker talks to {scheme} aggregators only ({})",
                    if self.tls.is_some() {
                        "it has TLS"
                    } else {
                        "--insecure"
                    }
                ),
            ));
        }
        let mut endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| failed(url, e))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|e| failed(url, format!("TLS: {e}")))?;
        }
        let client = AggregatorServiceClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(pb::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(pb::MAX_MESSAGE_BYTES);
        self.clients.insert(url.to_string(), client.clone());
        Ok(client)
    }

    /// Clients for every route of a job, in order.
    pub fn clients(
        &mut self,
        routes: &[ShardRoute],
    ) -> Result<Vec<(ShardRoute, Client)>, WorkerError> {
        routes
            .iter()
            .map(|r| Ok((r.clone(), self.client(&r.url)?)))
            .collect()
    }

    /// The job's parameters at `version`, each range from its aggregator (concurrently).
    pub async fn fetch(&mut self, task: &Task) -> Result<Vec<f32>, WorkerError> {
        let clients = self.clients(&task.job.shards)?;
        let job_id = task.job.job_id.to_string();
        let version = task.params_version;
        let parts = clients.into_iter().map(|(route, client)| {
            let job_id = job_id.clone();
            async move {
                let want = route.len as usize;
                with_retries(&route.url, || {
                    let mut c = client.clone();
                    let req = pb::FetchParametersRequest {
                        job_id: job_id.clone(),
                        version,
                    };
                    async move {
                        let mut stream = c.fetch_shard(req).await?.into_inner();
                        let mut part = Vec::with_capacity(want);
                        while let Some(chunk) = stream.next().await {
                            let chunk = chunk?;
                            if chunk.offset != part.len() as u64
                                || chunk.total != want as u64
                                || part.len() + chunk.data.len() / 4 > want
                            {
                                return Err(tonic::Status::data_loss(
                                    "parameter chunks out of order or of another size",
                                ));
                            }
                            extend_f32_from_le_bytes(&mut part, &chunk.data, "parameters")
                                .map_err(|e| tonic::Status::data_loss(e.to_string()))?;
                        }
                        if part.len() != want {
                            return Err(tonic::Status::data_loss(format!(
                                "{} parameters, expected {want}",
                                part.len()
                            )));
                        }
                        Ok(part)
                    }
                })
                .await
            }
        });
        let parts = try_join_all(parts).await?;
        let mut params = Vec::with_capacity(task.num_params as usize);
        for p in parts {
            params.extend_from_slice(&p);
        }
        Ok(params)
    }
}

/// Pushes a training task's summed gradient to its aggregators, each its range in the task's
/// format (concurrently).
pub async fn push(
    clients: Vec<(ShardRoute, Client)>,
    worker: WorkerId,
    task: &Task,
    gradient: &[f32],
    dtype: GradientDtype,
) -> Result<(), WorkerError> {
    let block = task.block.ok_or_else(|| {
        WorkerError::Parameters("a sharded training task without its reduction block".into())
    })?;
    let count = task.micro_batches();
    let pushes = clients.into_iter().map(|(route, client)| {
        let bytes = Bytes::from(dtype.encode(&gradient[route.range()]));
        let header = pb::ShardPushHeader {
            worker_id: worker.to_string(),
            job_id: task.job.job_id.to_string(),
            step: task.step.0,
            block_first: block.first,
            block_count: count,
            step_leaves: block.leaves,
            offset: route.offset,
            len: route.len,
            gradient_dtype: pb::GradientDtype::from(dtype) as i32,
        };
        async move {
            with_retries(&route.url, || {
                let mut msgs = vec![pb::ShardPushChunk {
                    part: Some(pb::shard_push_chunk::Part::Header(header.clone())),
                }];
                msgs.extend((0..bytes.len()).step_by(pb::CHUNK_BYTES).map(|s| {
                    pb::ShardPushChunk {
                        part: Some(pb::shard_push_chunk::Part::Gradient(
                            bytes.slice(s..(s + pb::CHUNK_BYTES).min(bytes.len())),
                        )),
                    }
                }));
                let mut c = client.clone();
                async move { c.push_shard(futures::stream::iter(msgs)).await }
            })
            .await
        }
    });
    try_join_all(pushes).await?;
    Ok(())
}
