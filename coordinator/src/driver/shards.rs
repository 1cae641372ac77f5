//! The coordinator's side of sharded aggregation (`aggregators: K` in a spec): installing a
//! job's parameter and Adam shards on its K aggregators, telling them to apply each step,
//! reading them back for checkpoints, evaluation and export, and watching that none of them
//! restarted. Any failure of an aggregator is [`CoordError::AggregatorLost`]: the job then
//! resumes from its newest checkpoint (see `run::run`), which gives the same bits.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ctcluster_common::optim::{AdamSnapshot, FlatAdam};
use ctcluster_common::shards::{ShardRoute, routes};
use ctcluster_common::spec::JobSpec;
use ctcluster_common::tensor_bytes::{extend_f32_from_le_bytes, f32_to_le_bytes};
use ctcluster_common::{Error, JobId};
use ctcluster_proto as pb;
use futures::StreamExt;
use futures::future::try_join_all;
use pb::aggregator_service_client::AggregatorServiceClient;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::error::CoordError;
use crate::tls::TlsFiles;

use super::run::Stop;
use super::start::Progress;

type Client = AggregatorServiceClient<Channel>;

/// How often the watch asks each aggregator whether it still holds the job's shard.
const WATCH_EVERY: Duration = Duration::from_millis(250);
/// How long one call to an aggregator may take before it counts as lost (loads and reads of
/// large shards take longer: they get [`BULK_TIMEOUT`]).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const BULK_TIMEOUT: Duration = Duration::from_secs(300);

/// A job's shards on its aggregators.
pub(super) struct Shards {
    job: JobId,
    routes: Vec<ShardRoute>,
    clients: Vec<Client>,
    optimizer_json: String,
    /// Each aggregator's incarnation when the shards were installed.
    incarnations: Mutex<Vec<String>>,
}

/// A client of the aggregator at `url`, connecting on first use. With TLS (the coordinator's
/// own), the coordinator shows its certificate, which aggregators let steer shards, and trusts
/// aggregators whose certificate the cluster CA (`--client-ca`) signed.
fn client(url: &str, tls: Option<&TlsFiles>) -> Result<Client, CoordError> {
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| CoordError::bad("aggregators", format!("{url}: {e}")))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true);
    if let Some(t) = tls {
        endpoint = endpoint
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&t.client_ca_pem))
                    .identity(Identity::from_pem(&t.cert_pem, &t.key_pem)),
            )
            .map_err(|e| CoordError::bad("aggregators", format!("{url}: TLS: {e}")))?;
    }
    Ok(AggregatorServiceClient::new(endpoint.connect_lazy())
        .max_decoding_message_size(pb::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(pb::MAX_MESSAGE_BYTES))
}

fn lost(route: &ShardRoute, what: &str, e: impl std::fmt::Display) -> CoordError {
    CoordError::AggregatorLost(format!("aggregator {} {what}: {e}", route.url))
}

impl Shards {
    /// The first `spec.aggregators` of the coordinator's aggregators, for a model of
    /// `num_params` parameters. Connections are made on first use.
    pub(super) fn new(
        job: &JobId,
        spec: &JobSpec,
        configured: &[String],
        tls: Option<&TlsFiles>,
        num_params: u64,
    ) -> Result<Shards, CoordError> {
        let k = spec.aggregators as usize;
        if k > configured.len() {
            return Err(Error::invalid(
                "aggregators",
                format!(
                    "the spec asks for {k} aggregators; this coordinator has {} (--aggregators)",
                    configured.len()
                ),
            )
            .into());
        }
        if num_params < k as u64 {
            return Err(Error::invalid(
                "aggregators",
                format!("{k} aggregators for {num_params} parameters"),
            )
            .into());
        }
        let routes = routes(&configured[..k], num_params);
        let clients = routes
            .iter()
            .map(|r| client(&r.url, tls))
            .collect::<Result<Vec<_>, CoordError>>()?;
        Ok(Shards {
            job: job.clone(),
            routes,
            clients,
            optimizer_json: serde_json::to_string(&spec.optimizer)
                .map_err(|e| CoordError::Internal(e.to_string()))?,
            incarnations: Mutex::new(Vec::new()),
        })
    }

    /// The routes workers use.
    pub(super) fn routes(&self) -> &[ShardRoute] {
        &self.routes
    }

    /// Installs the parameters and Adam's state at `version` on every aggregator, each its
    /// range.
    pub(super) async fn load(
        &self,
        params: &[f32],
        adam: &AdamSnapshot,
        version: u64,
    ) -> Result<(), CoordError> {
        let calls = self.routes.iter().zip(&self.clients).map(|(r, c)| {
            let range = r.range();
            let moments = |m: &[f32]| {
                if adam.time > 0 {
                    Bytes::from(f32_to_le_bytes(&m[range.clone()]))
                } else {
                    Bytes::new()
                }
            };
            let (p, m1, m2) = (
                Bytes::from(f32_to_le_bytes(&params[range.clone()])),
                moments(&adam.moment_1),
                moments(&adam.moment_2),
            );
            let part = |p| pb::ShardData { part: Some(p) };
            let mut msgs = vec![part(pb::shard_data::Part::Header(pb::ShardHeader {
                job_id: self.job.to_string(),
                offset: r.offset,
                len: r.len,
                version,
                adam_time: adam.time,
                optimizer_json: self.optimizer_json.clone(),
            }))];
            let chunks = |b: &Bytes, wrap: fn(Bytes) -> pb::shard_data::Part| {
                (0..b.len())
                    .step_by(pb::CHUNK_BYTES)
                    .map(|s| part(wrap(b.slice(s..(s + pb::CHUNK_BYTES).min(b.len())))))
                    .collect::<Vec<_>>()
            };
            msgs.extend(chunks(&p, pb::shard_data::Part::Params));
            msgs.extend(chunks(&m1, pb::shard_data::Part::Moment1));
            msgs.extend(chunks(&m2, pb::shard_data::Part::Moment2));
            let mut c = c.clone();
            async move {
                let call = c.load_shard(futures::stream::iter(msgs));
                match tokio::time::timeout(BULK_TIMEOUT, call).await {
                    Ok(Ok(r)) => Ok(r.into_inner().incarnation),
                    Ok(Err(e)) => Err(lost(r, "refused the shard", e.message())),
                    Err(_) => Err(lost(r, "did not take the shard", "timed out")),
                }
            }
        });
        let incarnations = try_join_all(calls).await?;
        *self.incarnations.lock().unwrap_or_else(|p| p.into_inner()) = incarnations;
        Ok(())
    }

    /// Applies step `step` on every aggregator: every block is in, divide by `batch`, Adam.
    pub(super) async fn apply(&self, step: u64, leaves: u32, batch: u32) -> Result<(), CoordError> {
        let calls = self.routes.iter().zip(&self.clients).map(|(r, c)| {
            let mut c = c.clone();
            let req = pb::ApplyStepRequest {
                job_id: self.job.to_string(),
                step,
                leaves,
                batch,
            };
            async move {
                match tokio::time::timeout(BULK_TIMEOUT, c.apply_step(req)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(lost(
                        r,
                        &format!("could not apply step {step}"),
                        e.message(),
                    )),
                    Err(_) => Err(lost(r, &format!("did not apply step {step}"), "timed out")),
                }
            }
        });
        try_join_all(calls).await?;
        Ok(())
    }

    /// The whole parameter vector and Adam's state at `version`, read back from every
    /// aggregator.
    pub(super) async fn read(&self, version: u64) -> Result<(Vec<f32>, AdamSnapshot), CoordError> {
        let calls = self.routes.iter().zip(&self.clients).map(|(r, c)| {
            let mut c = c.clone();
            let req = pb::ReadShardRequest {
                job_id: self.job.to_string(),
                version,
            };
            async move {
                let read = async {
                    let mut stream = c.read_shard(req).await?.into_inner();
                    let mut out = (Vec::new(), Vec::new(), Vec::new(), 0u64);
                    while let Some(msg) = stream.next().await {
                        let (vec, bytes) = match msg?.part {
                            Some(pb::shard_data::Part::Header(h)) => {
                                out.3 = h.adam_time;
                                continue;
                            }
                            Some(pb::shard_data::Part::Params(b)) => (&mut out.0, b),
                            Some(pb::shard_data::Part::Moment1(b)) => (&mut out.1, b),
                            Some(pb::shard_data::Part::Moment2(b)) => (&mut out.2, b),
                            None => continue,
                        };
                        if vec.len() + bytes.len() / 4 > r.len as usize {
                            return Err(tonic::Status::data_loss("more values than the shard"));
                        }
                        extend_f32_from_le_bytes(vec, &bytes, "shard")
                            .map_err(|e| tonic::Status::data_loss(e.to_string()))?;
                    }
                    Ok::<_, tonic::Status>(out)
                };
                let (p, m1, m2, time) = match tokio::time::timeout(BULK_TIMEOUT, read).await {
                    Ok(Ok(out)) => out,
                    Ok(Err(e)) => return Err(lost(r, "could not be read", e.message())),
                    Err(_) => return Err(lost(r, "could not be read", "timed out")),
                };
                let n = r.len as usize;
                let moments = if time > 0 { n } else { 0 };
                if p.len() != n || m1.len() != moments || m2.len() != moments {
                    return Err(lost(
                        r,
                        "sent a short shard",
                        format!("{} of {n} parameters", p.len()),
                    ));
                }
                Ok((p, m1, m2, time))
            }
        });
        let parts = try_join_all(calls).await?;
        let time = parts.first().map_or(0, |p| p.3);
        if parts.iter().any(|p| p.3 != time) {
            return Err(CoordError::AggregatorLost(
                "the aggregators' Adam states are at different steps".into(),
            ));
        }
        let mut params = Vec::new();
        let mut snap = AdamSnapshot {
            time,
            moment_1: Vec::new(),
            moment_2: Vec::new(),
        };
        for (p, m1, m2, _) in parts {
            params.extend_from_slice(&p);
            snap.moment_1.extend_from_slice(&m1);
            snap.moment_2.extend_from_slice(&m2);
        }
        Ok((params, snap))
    }

    /// Whether every aggregator still holds the shard it was given (the same process, the job
    /// loaded); the first that does not, and why.
    async fn check(&self) -> Result<(), CoordError> {
        let want = self
            .incarnations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (i, (r, c)) in self.routes.iter().zip(&self.clients).enumerate() {
            let mut c = c.clone();
            let req = pb::AggregatorStatusRequest {
                job_id: self.job.to_string(),
            };
            let s = match tokio::time::timeout(CALL_TIMEOUT, c.aggregator_status(req)).await {
                Ok(Ok(s)) => s.into_inner(),
                Ok(Err(e)) => return Err(lost(r, "does not answer", e.message())),
                Err(_) => return Err(lost(r, "does not answer", "timed out")),
            };
            if want.get(i) != Some(&s.incarnation) || !s.loaded {
                return Err(lost(r, "restarted", "its shard is gone"));
            }
        }
        Ok(())
    }

    /// Starts watching the aggregators; dropping the watch stops it.
    pub(super) fn watch(self: &Arc<Self>) -> Watch {
        let (tx, rx) = watch::channel(None);
        let shards = self.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(WATCH_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failures = 0;
            loop {
                tick.tick().await;
                match shards.check().await {
                    Ok(()) => failures = 0,
                    // Two misses in a row: one slow answer is not a lost aggregator.
                    Err(e) => {
                        failures += 1;
                        if failures >= 2 {
                            let _ = tx.send(Some(e.to_string()));
                            return;
                        }
                    }
                }
            }
        });
        Watch { rx, task }
    }
}

/// A running watch over a job's aggregators.
pub(super) struct Watch {
    rx: watch::Receiver<Option<String>>,
    task: JoinHandle<()>,
}

impl Watch {
    /// Resolves when an aggregator is lost, with why.
    pub(super) async fn lost(&self) -> CoordError {
        let mut rx = self.rx.clone();
        let why = match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone().unwrap_or_default(),
            Err(_) => "the aggregator watch stopped".to_string(),
        };
        CoordError::AggregatorLost(why)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Forgets a job's shards on the aggregators at `urls` (best effort: an aggregator that does not
/// answer has restarted and holds nothing, or is gone).
pub(super) async fn drop_shards(job: &JobId, urls: &[String], tls: Option<&TlsFiles>) {
    let calls = urls.iter().map(|url| async move {
        let call = async {
            let mut c = client(url, tls)?;
            c.drop_shard(pb::DropShardRequest {
                job_id: job.to_string(),
            })
            .await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        };
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(aggregator = %url, error = %e, "could not drop a shard"),
            Err(_) => tracing::debug!(aggregator = %url, "could not drop a shard: timed out"),
        }
    });
    futures::future::join_all(calls).await;
}

/// With sharded aggregation, reads the parameters and Adam's state at the job's step back from
/// the aggregators into `p` (the coordinator's copy is stale between these).
pub(super) async fn sync(
    p: &mut Progress,
    shards: Option<&Shards>,
    spec: &JobSpec,
) -> Result<(), Stop> {
    let Some(s) = shards else {
        return Ok(());
    };
    let (params, adam) = s.read(p.state.step.0).await?;
    if params.len() != p.params.len() {
        return Err(Stop::Failed(CoordError::AggregatorLost(format!(
            "the aggregators hold {} parameters, the model has {}",
            params.len(),
            p.params.len()
        ))));
    }
    p.params = params;
    p.adam = FlatAdam::restore(&spec.optimizer, adam)?;
    Ok(())
}
