//! The worker's life: connect, register, then fetch tasks, compute and push results until told
//! to stop; reconnect with backoff when the coordinator goes away.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ctcluster_common::WorkerId;
use ctcluster_common::addr_file::write_addr_file;
use ctcluster_common::dtype::GradientDtype;
use ctcluster_common::model::{BatchInput, ModelConfig};
use ctcluster_common::task::{FailureKind, ResultHeader, Task, TaskFailure, TaskKind};
use ctcluster_common::telemetry::{TraceCarrier, carrier_from_metadata, child_of_carrier};
use ctcluster_common::trace_span;
use ctcluster_proto as pb;
use pb::worker_service_client::WorkerServiceClient;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tracing::field::Empty;
use tracing::{Instrument, Span};

use crate::WorkerError;
use crate::aggregators::{self, Aggregators};
use crate::cache::Cache;
use crate::compute::{ComputeThread, Output, Work};
use crate::config::WorkerConfig;
use crate::device::parse_device;
use crate::health::HealthListener;
use ctcluster_common::health::Health;

type Client = WorkerServiceClient<Channel>;

/// Runs a worker until `shutdown` is cancelled; in-flight work is finished and pushed first.
pub async fn run_worker(
    config: WorkerConfig,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let device = parse_device(&config.device)?;
    let health = Health::new().await;
    let _health_listener = match config.health_listen {
        Some(addr) => {
            let listener = HealthListener::start(addr, health.clone()).await?;
            if let Some(path) = &config.addr_file {
                write_addr_file(path, &[("health", listener.local_addr())])?;
            }
            Some(listener)
        }
        None => None,
    };
    let compute = ComputeThread::start(device);
    let mut cache = Cache::default();
    let mut endpoint = Endpoint::from_shared(config.coordinator.clone())
        .map_err(|e| WorkerError::Config(format!("--coordinator: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        // A connection whose link went down is noticed within seconds (unanswered pings),
        // not after TCP's retransmissions give up; the worker then reconnects.
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    if let Some(tls) = &config.tls {
        endpoint = endpoint
            .tls_config(tls.client_config())
            .map_err(|e| WorkerError::Config(format!("TLS: {e}")))?;
    }
    let mut backoff = Duration::from_millis(100);
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let session = async {
            let channel = endpoint.connect().await?;
            let mut client = WorkerServiceClient::new(channel)
                .max_decoding_message_size(pb::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(pb::MAX_MESSAGE_BYTES);
            let reg = client
                .register(pb::RegisterRequest {
                    protocol_version: pb::PROTOCOL_VERSION,
                    name: config.name.clone(),
                    device: config.device.clone(),
                })
                .await?
                .into_inner();
            Ok::<_, WorkerError>((client, reg))
        };
        let (client, reg) = tokio::select! {
            r = session => match r {
                Ok(ok) => ok,
                Err(WorkerError::Rpc(s))
                    if matches!(
                        s.code(),
                        tonic::Code::FailedPrecondition
                            | tonic::Code::Unauthenticated
                            | tonic::Code::PermissionDenied
                    ) =>
                {
                    return Err(WorkerError::Rpc(s));
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "cannot reach the coordinator");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => return Ok(()),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            },
            _ = shutdown.cancelled() => return Ok(()),
        };
        backoff = Duration::from_millis(100);
        let worker: WorkerId = match reg.worker_id.parse() {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(error = %e, "the coordinator answered with a bad worker id; reconnecting");
                continue;
            }
        };
        tracing::info!(%worker, "registered with the coordinator");
        health.set_ready(true).await;
        let beat = CancellationToken::new();
        let heartbeat = tokio::spawn(heartbeat(
            client.clone(),
            reg.worker_id.clone(),
            Duration::from_millis(u64::from(reg.heartbeat_interval_ms.max(50))),
            health.clone(),
            beat.clone(),
        ));
        let result = work_loop(
            client.clone(),
            worker,
            &compute,
            &mut cache,
            &config,
            &shutdown,
        )
        .await;
        beat.cancel();
        let _ = heartbeat.await;
        health.set_ready(false).await;
        match result {
            Ok(()) => {
                let mut c = client;
                let bye = c.goodbye(pb::GoodbyeRequest {
                    worker_id: reg.worker_id.clone(),
                });
                let _ = tokio::time::timeout(Duration::from_secs(2), bye).await;
                tracing::info!(worker = %reg.worker_id, "worker stopped");
                return Ok(());
            }
            Err(e) => tracing::warn!(error = %e, "lost the coordinator session; reconnecting"),
        }
    }
}

/// Beats until `stop`; readiness follows whether the coordinator answers.
async fn heartbeat(
    mut client: Client,
    worker_id: String,
    every: Duration,
    health: Health,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // A beat with no answer within two periods (at least 1 s: a cut link) has failed.
        let answered = tokio::time::timeout(
            every.max(Duration::from_millis(500)) * 2,
            client.heartbeat(pb::HeartbeatRequest {
                worker_id: worker_id.clone(),
            }),
        )
        .await;
        let ok = matches!(answered, Ok(Ok(_)));
        if !ok {
            tracing::debug!(?answered, "heartbeat failed");
        }
        health.set_ready(ok).await;
    }
}

/// A fetched task with what its computation needs (or why it cannot run), and the seconds
/// spent getting parameters and data and building the batch.
struct Prepared {
    task: Task,
    span: Span,
    fetch_seconds: f64,
    input: Result<Input, WorkerError>,
}

/// What the compute thread needs for one task.
struct Input {
    work: Work,
    model: Arc<ModelConfig>,
    params: Arc<Vec<f32>>,
    batch: BatchInput,
}

type Fetch =
    Pin<Box<dyn Future<Output = Result<Option<(Task, TraceCarrier)>, WorkerError>> + Send>>;

/// A result on its way to the coordinator.
type Push = Pin<Box<dyn Future<Output = Result<(), WorkerError>> + Send>>;

/// What happened while a task computed.
enum Event {
    /// The prefetched next task arrived (or the long poll ended without one).
    Fetched(Result<Option<(Task, TraceCarrier)>, WorkerError>),
    /// The previous task's result finished pushing.
    Pushed(Result<(), WorkerError>),
}

/// Asks the coordinator for a task (a long poll: `None` when none came). A task this worker
/// cannot read (a kind it does not know, a missing field) is reported back as failed, and
/// retryable: another worker may know it.
fn fetch(client: &Client, worker: WorkerId) -> Fetch {
    let mut client = client.clone();
    Box::pin(async move {
        let reply = client
            .fetch_work(pb::FetchWorkRequest {
                worker_id: worker.to_string(),
            })
            .await?;
        let trace = carrier_from_metadata(reply.metadata());
        let Some(raw) = reply.into_inner().task else {
            return Ok(None);
        };
        let (task_id, step) = (raw.task_id, raw.step);
        let job_id = raw
            .job
            .as_ref()
            .map(|j| j.job_id.clone())
            .unwrap_or_default();
        match Task::try_from(raw) {
            Ok(task) => Ok(Some((task, trace))),
            Err(e) => {
                tracing::warn!(task = task_id, error = %e, "cannot read a task");
                let header = pb::ResultHeader {
                    worker_id: worker.to_string(),
                    job_id,
                    task_id,
                    step,
                    error: format!("task {task_id}: {e}"),
                    error_kind: pb::TaskFailureKind::from(FailureKind::Retryable) as i32,
                    ..Default::default()
                };
                push(client, header, Vec::new(), GradientDtype::F32).await?;
                Ok(None)
            }
        }
    })
}

/// Fetches, prepares and computes tasks, one at a time on the compute thread; while one
/// computes, the next task is fetched and its parameters, shards and batch are made ready, and
/// the previous task's result is pushed, so neither data nor the network waits on compute or
/// compute on them. At most one push is in flight: results reach the coordinator in order.
async fn work_loop(
    mut client: Client,
    worker: WorkerId,
    compute: &ComputeThread,
    cache: &mut Cache,
    config: &WorkerConfig,
    shutdown: &CancellationToken,
) -> Result<(), WorkerError> {
    let mut trained = 0u64;
    let mut aggs = Aggregators::new(config.tls.as_ref().map(|t| t.client_config()));
    let mut pending: Option<Fetch> = None;
    let mut ready: Option<Prepared> = None;
    let mut pushing: Option<Push> = None;
    loop {
        let current = match ready.take() {
            Some(p) => p,
            None => {
                let next = pending.take().unwrap_or_else(|| fetch(&client, worker));
                let got = tokio::select! {
                    r = next => r?,
                    _ = shutdown.cancelled() => return Ok(()),
                };
                let Some((task, trace)) = got else {
                    continue;
                };
                prepare(&mut client, &mut aggs, task, &trace, worker, cache).await
            }
        };
        let Prepared {
            task,
            span,
            fetch_seconds,
            input,
        } = current;
        let compute_started = Instant::now();
        let run = async {
            if let Some(delay) = config.faults.delay {
                tokio::time::sleep(delay).await;
            }
            let Input {
                work,
                model,
                params,
                batch,
            } = input?;
            let eval = matches!(work, Work::Eval);
            let compute_span = trace_span!(
                parent: &span,
                "forward_backward",
                otel.name = if eval { "forward" } else { "forward_backward" },
            );
            compute
                .run(work, model, params, batch)
                .instrument(compute_span)
                .await
        };
        tokio::pin!(run);
        let outcome = loop {
            let prefetch = config.prefetch && ready.is_none() && !shutdown.is_cancelled();
            if prefetch && pending.is_none() {
                pending = Some(fetch(&client, worker));
            }
            let event = tokio::select! {
                out = &mut run => break out,
                r = async {
                    match pushing.as_mut() {
                        Some(p) => p.await,
                        None => std::future::pending().await,
                    }
                }, if pushing.is_some() => Event::Pushed(r),
                r = async {
                    match pending.as_mut() {
                        Some(f) => f.await,
                        None => std::future::pending().await,
                    }
                }, if prefetch => Event::Fetched(r),
            };
            let fetched = match event {
                Event::Pushed(r) => {
                    pushing = None;
                    r?;
                    continue;
                }
                Event::Fetched(r) => r,
            };
            pending = None;
            match fetched {
                Ok(Some((next, trace))) => {
                    ready =
                        Some(prepare(&mut client, &mut aggs, next, &trace, worker, cache).await);
                }
                // The long poll ended without a task: ask again after this result is pushed.
                Ok(None) => {}
                Err(e) => return Err(e),
            }
        };
        let compute_seconds = compute_started.elapsed().as_secs_f64();
        // The previous result goes first.
        if let Some(p) = pushing.take() {
            p.await?;
        }
        let mut header = ResultHeader {
            worker,
            job: task.job.job_id.clone(),
            task: task.id,
            step: task.step,
            // At most MAX_TASK_SAMPLES (checked when the task was read).
            samples: u32::try_from(task.samples.len()).unwrap_or(u32::MAX),
            loss_sum: 0.0,
            correct: 0,
            gradient_len: 0,
            gradient_dtype: task.job.gradient_dtype,
            compute_seconds,
            fetch_seconds,
            confusion: Vec::new(),
            probs: Vec::new(),
            labels: Vec::new(),
            failure: None,
        };
        let mut gradient = Vec::new();
        match outcome {
            Ok(Output::Train(t)) => {
                header.loss_sum = t.loss_sum;
                header.correct = t.correct;
                header.gradient_len = t.grad.len() as u64;
                gradient = t.grad;
                trained += 1;
                if let Some(n) = config.faults.nan_every
                    && trained.is_multiple_of(n)
                    && let Some(g) = gradient.first_mut()
                {
                    tracing::warn!(task = %task.id, "fault injection: sending a NaN gradient");
                    *g = f32::NAN;
                }
            }
            Ok(Output::Eval(e)) => {
                header.loss_sum = e.loss_sum;
                header.correct = e.correct;
                header.confusion = e.confusion;
                header.probs = e.probs;
                header.labels = e.labels;
            }
            Err(e) if e.ends_session() => return Err(e),
            Err(e) => {
                let kind = e.failure_kind();
                span.in_scope(|| tracing::warn!(task = %task.id, error = %e, ?kind, "task failed"));
                header.failure = Some(TaskFailure {
                    kind,
                    message: e.to_string(),
                });
            }
        }
        span.record("loss", header.loss_sum / f64::from(header.samples.max(1)));
        let push_span = trace_span!(parent: &span, "push", bytes = 4 * gradient.len());
        let dtype = task.job.gradient_dtype;
        let result: Push = if task.job.shards.is_empty() || header.failure.is_some() {
            Box::pin(push(client.clone(), header.into(), gradient, dtype).instrument(push_span))
        } else {
            // Sharded: the gradient goes to the aggregators, then the result (without it) to
            // the coordinator; a push that fails makes the result a retryable failure.
            let clients = aggs.clients(&task.job.shards);
            let (client, task) = (client.clone(), task.clone());
            Box::pin(
                async move {
                    let pushed = match clients {
                        Ok(c) => aggregators::push(c, worker, &task, &gradient, dtype).await,
                        Err(e) => Err(e),
                    };
                    drop(gradient);
                    header.gradient_len = 0;
                    if let Err(e) = pushed {
                        tracing::warn!(task = %task.id, error = %e, "gradient not pushed to the aggregators");
                        header.failure = Some(TaskFailure {
                            kind: e.failure_kind(),
                            message: e.to_string(),
                        });
                    }
                    push(client, header.into(), Vec::new(), dtype).await
                }
                .instrument(push_span),
            )
        };
        if ready.is_some() {
            // The next task is ready: it computes while this result travels.
            pushing = Some(result);
            continue;
        }
        // Nothing to compute meanwhile, and the next task may wait on this result.
        result.await?;
        if shutdown.is_cancelled() {
            return Ok(());
        }
    }
}

/// The span of one task in its job's trace: a child of the coordinator's step (or
/// evaluation) span when the coordinator sent its context, else disabled.
fn task_span(trace: &TraceCarrier, task: &Task, worker: WorkerId) -> Span {
    if trace.is_empty() {
        return Span::none();
    }
    let span = trace_span!(
        "micro_batch",
        job.id = task.job.job_id.as_str(),
        worker.id = %worker,
        task = task.id.0,
        kind = task.kind.as_str(),
        epoch = task.epoch,
        step = task.step.0,
        samples = task.samples.len(),
        loss = Empty,
    );
    child_of_carrier(&span, trace);
    span
}

/// Gets what a task needs: its parameters (unless cached), its shards (unless cached) and its
/// batch (preprocessed and augmented).
async fn prepare(
    client: &mut Client,
    aggs: &mut Aggregators,
    task: Task,
    trace: &TraceCarrier,
    worker: WorkerId,
    cache: &mut Cache,
) -> Prepared {
    let span = task_span(trace, &task, worker);
    let started = Instant::now();
    let input = async {
        let job = task.job.as_ref();
        let fetch = trace_span!(parent: &span, "fetch", params_version = task.params_version, shards_read = Empty);
        let (model, params) = async {
            let model = cache.model(job).await?;
            let params = if task.kind == TaskKind::Train && !job.shards.is_empty() {
                cache.sharded_params(aggs, &task).await?
            } else {
                cache
                    .params(client, job, task.params_version, task.num_params)
                    .await?
            };
            let read = cache.load_shards(&task, job).await?;
            Span::current().record("shards_read", read);
            Ok::<_, WorkerError>((model, params))
        }
        .instrument(fetch)
        .await?;
        let batch = trace_span!(parent: &span, "preprocess", samples = task.samples.len())
            .in_scope(|| cache.batch(&task, job))?;
        let work = match task.kind {
            TaskKind::Train => Work::Train {
                micro_batch: task.micro_batch_size as usize,
            },
            TaskKind::Eval => Work::Eval,
        };
        Ok(Input {
            work,
            model,
            params,
            batch,
        })
    }
    .await;
    Prepared {
        fetch_seconds: started.elapsed().as_secs_f64(),
        task,
        span,
        input,
    }
}

async fn push(
    mut client: Client,
    header: pb::ResultHeader,
    gradient: Vec<f32>,
    dtype: GradientDtype,
) -> Result<(), WorkerError> {
    // One copy into little-endian bytes of the task's format; the chunks are views of it, not
    // copies, each a whole number of values.
    let bytes = bytes::Bytes::from(dtype.encode(&gradient));
    drop(gradient);
    let mut msgs = vec![pb::ResultChunk {
        part: Some(pb::result_chunk::Part::Header(header)),
    }];
    msgs.extend((0..bytes.len()).step_by(pb::CHUNK_BYTES).map(|start| {
        let end = (start + pb::CHUNK_BYTES).min(bytes.len());
        pb::ResultChunk {
            part: Some(pb::result_chunk::Part::Gradient(bytes.slice(start..end))),
        }
    }));
    match client.push_result(futures::stream::iter(msgs)).await {
        Ok(_) => Ok(()),
        // The coordinator refused this result (and re-queued the task): carry on.
        Err(s) if s.code() == tonic::Code::InvalidArgument => {
            tracing::warn!(error = %s.message(), "result refused by the coordinator");
            Ok(())
        }
        Err(s) => Err(s.into()),
    }
}
