//! The coordinator's shared state: jobs, workers, the task queue, and the tasks it owns.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ctcluster_common::card::load_card;
use ctcluster_common::checkpoint::Checkpoint;
use ctcluster_common::dataset::{load_manifest, verify_shard_sizes};
use ctcluster_common::evaluate::check_fits;
use ctcluster_common::job::{JobRecord, JobState, MAX_UNFINISHED_STARTS};
use ctcluster_common::seal::DataKey;
use ctcluster_common::spec::JobSpec;
use ctcluster_common::storage::StoreUrl;
use ctcluster_common::telemetry::TraceCarrier;
use ctcluster_common::{JobId, WorkerId};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access;
use crate::admission::{self, Admissions};
use crate::auth::Principal;
use crate::config::CoordinatorConfig;
use crate::error::CoordError;
use crate::job::JobHandle;
use crate::scheduler::Scheduler;
use crate::workers::WorkerRegistry;
use crate::{driver, records};

/// Everything the coordinator's services share.
pub struct Coordinator {
    /// Settings.
    pub config: CoordinatorConfig,
    /// Registered workers.
    pub workers: WorkerRegistry,
    /// The task queue.
    pub scheduler: Scheduler,
    /// Unfinished jobs and the memory reserved for them.
    pub admissions: Admissions,
    /// Cancelled when the coordinator stops.
    pub shutdown: CancellationToken,
    /// Owns every task the coordinator spawns, so shutdown can wait for them.
    pub tracker: TaskTracker,
    jobs: Mutex<HashMap<JobId, Arc<JobHandle>>>,
    seq: AtomicU64,
}

impl Coordinator {
    /// A coordinator with no jobs yet.
    pub fn new(config: CoordinatorConfig) -> Arc<Self> {
        Arc::new(Coordinator {
            config,
            workers: WorkerRegistry::default(),
            scheduler: Scheduler::default(),
            admissions: Admissions::default(),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            jobs: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
        })
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Arc<JobHandle>>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads job records from the state URL and resumes every job that had not ended, and
    /// starts the worker-lease reaper.
    pub async fn start(self: &Arc<Self>) -> Result<(), CoordError> {
        let mut recs = records::load_all(&self.config.state_url).await?;
        recs.sort_by(|a, b| a.id.cmp(&b.id));
        for mut rec in recs {
            let spec = match JobSpec::from_yaml(&rec.spec_yaml) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(job = %rec.id, error = %e, "job record has a bad spec; skipped");
                    if !rec.state.is_terminal() {
                        rec.state = JobState::Failed;
                        rec.message = format!("the job record's spec does not load: {e}");
                        records::save(&self.config.state_url, &rec).await?;
                    }
                    continue;
                }
            };
            if !rec.state.is_terminal() && rec.unfinished_starts >= MAX_UNFINISHED_STARTS {
                tracing::error!(job = %rec.id, starts = rec.unfinished_starts, "job never got past its start; failed, not started again");
                rec.state = JobState::Failed;
                rec.message = format!(
                    "the job was started {} times without reaching a step (the coordinator \
                     stopped during its start each time); it is not started again",
                    rec.unfinished_starts
                );
                records::save(&self.config.state_url, &rec).await?;
            }
            let resume = !rec.state.is_terminal();
            if resume {
                self.admissions
                    .restore(&rec.id, &rec.owner, rec.reserved_bytes);
            }
            let handle = self.insert(spec, rec);
            if resume {
                tracing::info!(job = %handle.id, "resuming job after coordinator start");
                self.spawn_driver(handle);
            }
        }
        let me = self.clone();
        self.tracker.spawn(async move { me.reap_workers().await });
        Ok(())
    }

    async fn reap_workers(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.heartbeat);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            for (id, w) in self.workers.expire(self.config.worker_lease) {
                let n = self.release_worker(id);
                tracing::warn!(worker = %id, name = %w.name, requeued = n, "worker lease expired; dropped");
            }
        }
    }

    /// Puts the tasks a lost worker held back in the queue, counting them in their jobs'
    /// records; returns how many.
    pub fn release_worker(&self, id: WorkerId) -> usize {
        let jobs = self.scheduler.release_worker(id);
        for job in &jobs {
            if let Some(handle) = self.jobs().get(job) {
                handle.update(|r| r.requeued_tasks += 1);
            }
        }
        jobs.len()
    }

    fn insert(&self, spec: JobSpec, record: JobRecord) -> Arc<JobHandle> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let handle = Arc::new(JobHandle::new(spec, record, seq));
        self.jobs().insert(handle.id.clone(), handle.clone());
        handle
    }

    fn spawn_driver(self: &Arc<Self>, handle: Arc<JobHandle>) {
        let me = self.clone();
        self.tracker
            .spawn(async move { driver::run(me, handle).await });
    }

    /// Validates a spec (and that its dataset and checkpoint exist), then queues the job.
    pub async fn submit(
        self: &Arc<Self>,
        spec_yaml: &str,
        trace_context: TraceCarrier,
        owner: &Principal,
    ) -> Result<JobId, CoordError> {
        if self.shutdown.is_cancelled() {
            return Err(CoordError::ShuttingDown);
        }
        let spec = JobSpec::from_yaml(spec_yaml)?;
        access::check_spec(&spec, owner, &self.config.scope, &self.list())?;
        if spec.aggregators as usize > self.config.aggregators.len() {
            return Err(ctcluster_common::Error::invalid(
                "aggregators",
                format!(
                    "the spec asks for {} aggregators; this coordinator has {} (--aggregators)",
                    spec.aggregators,
                    self.config.aggregators.len()
                ),
            )
            .into());
        }
        let dataset = StoreUrl::parse(&spec.dataset).map_err(|e| e.in_field("dataset"))?;
        let manifest = load_manifest(&dataset)
            .await
            .map_err(|e| e.in_field("dataset"))?;
        // Row counts are believed only as far as the shard files bear them out.
        let split = match &spec.evaluate {
            Some(ev) => ev.split.as_str(),
            None => "train",
        };
        verify_shard_sizes(&dataset, &manifest, split)
            .await
            .map_err(|e| e.in_field("dataset"))?;
        // Encrypted data, or checkpoints to encrypt: the key must be here now, not fail later.
        if let Some(e) = &manifest.encryption {
            DataKey::from_env(&e.key_id, &format!("dataset {}", spec.dataset))
                .map_err(|e| e.in_field("dataset"))?;
        }
        if let Some(e) = &spec.encryption {
            DataKey::from_env(&e.key_id, "the job's checkpoints")
                .map_err(|e| e.in_field("encryption.key_id"))?;
        }
        if let Some(split) = &spec.validation.split {
            verify_shard_sizes(&dataset, &manifest, split)
                .await
                .map_err(|e| e.in_field("validation.split"))?;
        }
        let model = match &spec.evaluate {
            // The model to evaluate: its card must be readable and fit the dataset now.
            Some(ev) => {
                let card = load_card(&ev.model)
                    .await
                    .map_err(|e| e.in_field("evaluate.model"))?;
                check_fits(&manifest, &card, &spec.dataset)?;
                card.model
            }
            None => ctcluster_common::model::model_for_job(&spec, &manifest)?,
        };
        let bytes = admission::footprint(&spec, &manifest, model.num_params());
        if let Some(r) = &spec.resume_from {
            let url = StoreUrl::parse(r)?;
            // No larger than the job's own model: a checkpoint of another model is refused
            // from its state.json, before its tensors are read.
            let ck = Checkpoint::load_limited(&url, model.num_params())
                .await
                .map_err(|e| e.in_field("resume_from"))?;
            access::check_sealing(&spec, &ck).map_err(|e| CoordError::NotYours {
                field: "resume_from",
                url: r.clone(),
                reason: e,
            })?;
        }
        StoreUrl::parse(&spec.output).map_err(|e| e.in_field("output"))?;
        let id = JobId::generate();
        self.admissions
            .admit(&self.config.limits, &id, owner.name(), bytes)?;
        let mut record = JobRecord::queued(
            id.clone(),
            spec.name.clone(),
            spec_yaml.to_string(),
            spec.epochs,
        );
        record.trace_context = trace_context;
        record.owner = owner.name().to_string();
        record.reserved_bytes = bytes;
        if let Err(e) = records::save(&self.config.state_url, &record).await {
            self.admissions.release(&id);
            return Err(e.into());
        }
        let handle = self.insert(spec, record);
        tracing::info!(job = %id, name = %handle.spec.name, "job submitted");
        self.spawn_driver(handle);
        Ok(id)
    }

    /// A job by id.
    pub fn job(&self, id: &JobId) -> Result<Arc<JobHandle>, CoordError> {
        self.jobs()
            .get(id)
            .cloned()
            .ok_or_else(|| CoordError::JobNotFound(id.clone()))
    }

    /// Every job, in submission order.
    pub fn list(&self) -> Vec<Arc<JobHandle>> {
        let mut v: Vec<_> = self.jobs().values().cloned().collect();
        v.sort_by_key(|j| j.seq);
        v
    }

    /// Cancels a job (no effect on one that has ended).
    pub fn cancel(&self, id: &JobId) -> Result<Arc<JobHandle>, CoordError> {
        let job = self.job(id)?;
        if !job.record().state.is_terminal() {
            job.cancel.cancel();
        }
        Ok(job)
    }

    /// Stops every job driver (their records stay as they are, so a restart resumes them)
    /// and waits for the coordinator's tasks to end.
    pub async fn stop(&self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}
