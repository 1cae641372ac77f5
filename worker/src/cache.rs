//! What a worker keeps between tasks of a job: the dataset manifest, decoded shards, the model
//! configuration and the newest parameters. Only the most recent jobs are kept.

use std::collections::HashMap;
use std::sync::Arc;

use ctcluster_common::dataset::{DecodedShard, Manifest, load_manifest, load_shard};
use ctcluster_common::model::{BatchBuilder, BatchInput, ModelConfig, dropout_keep_mask};
use ctcluster_common::storage::StoreUrl;
use ctcluster_common::task::{Task, TaskJob, TaskKind};
use ctcluster_common::tensor_bytes::extend_f32_from_le_bytes;
use ctcluster_common::{Error, JobId};
use ctcluster_proto as pb;
use futures::StreamExt;
use tonic::transport::Channel;

use crate::WorkerError;
use crate::aggregators::Aggregators;

/// Jobs whose data stays cached at once.
const MAX_JOBS: usize = 2;

struct JobCache {
    dataset: StoreUrl,
    manifest: Manifest,
    model: Arc<ModelConfig>,
    shards: HashMap<(String, u32), Arc<DecodedShard>>,
    params: Option<(u64, Arc<Vec<f32>>)>,
    last_used: u64,
}

/// The per-job caches of one worker.
#[derive(Default)]
pub struct Cache {
    jobs: HashMap<JobId, JobCache>,
    clock: u64,
}

impl Cache {
    async fn job(&mut self, job: &TaskJob) -> Result<&mut JobCache, WorkerError> {
        self.clock += 1;
        if !self.jobs.contains_key(&job.job_id) {
            if self.jobs.len() >= MAX_JOBS
                && let Some(oldest) = self
                    .jobs
                    .iter()
                    .min_by_key(|(_, c)| c.last_used)
                    .map(|(k, _)| k.clone())
            {
                self.jobs.remove(&oldest);
            }
            let dataset = StoreUrl::parse(&job.dataset_url)?;
            let manifest = load_manifest(&dataset).await?;
            let model: ModelConfig = serde_json::from_str(&job.model_json)
                .map_err(|e| Error::invalid("model_json", e.to_string()))?;
            model.validate()?;
            self.jobs.insert(
                job.job_id.clone(),
                JobCache {
                    dataset,
                    manifest,
                    model: Arc::new(model),
                    shards: HashMap::new(),
                    params: None,
                    last_used: 0,
                },
            );
        }
        let entry = self
            .jobs
            .get_mut(&job.job_id)
            .ok_or(WorkerError::ComputeGone)?;
        entry.last_used = self.clock;
        Ok(entry)
    }

    /// The model configuration of a task's job.
    pub async fn model(&mut self, job: &TaskJob) -> Result<Arc<ModelConfig>, WorkerError> {
        Ok(self.job(job).await?.model.clone())
    }

    /// The parameters a task needs, fetched from the coordinator unless cached.
    pub async fn params(
        &mut self,
        client: &mut pb::worker_service_client::WorkerServiceClient<Channel>,
        job: &TaskJob,
        version: u64,
        expected_len: u64,
    ) -> Result<Arc<Vec<f32>>, WorkerError> {
        let entry = self.job(job).await?;
        if let Some((v, p)) = &entry.params
            && *v == version
        {
            return Ok(p.clone());
        }
        let want = usize::try_from(expected_len)
            .map_err(|_| WorkerError::Parameters(format!("{expected_len} values: too many")))?;
        let mut stream = client
            .fetch_parameters(pb::FetchParametersRequest {
                job_id: job.job_id.to_string(),
                version,
            })
            .await
            .map_err(WorkerError::for_task)?
            .into_inner();
        let mut params = Vec::with_capacity(want);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if chunk.offset != params.len() as u64 || chunk.total != expected_len {
                return Err(WorkerError::Parameters(
                    "chunks out of order or of another size".into(),
                ));
            }
            extend_f32_from_le_bytes(&mut params, &chunk.data, "parameters")
                .map_err(|e| WorkerError::Parameters(e.to_string()))?;
            if params.len() > want {
                return Err(WorkerError::Parameters("more values than announced".into()));
            }
        }
        if params.len() != want {
            return Err(WorkerError::Parameters(format!(
                "{} values, expected {want}",
                params.len()
            )));
        }
        let params = Arc::new(params);
        entry.params = Some((version, params.clone()));
        Ok(params)
    }

    /// A sharded training task's parameters, fetched from its job's aggregators unless cached.
    pub async fn sharded_params(
        &mut self,
        aggs: &mut Aggregators,
        task: &Task,
    ) -> Result<Arc<Vec<f32>>, WorkerError> {
        let entry = self.job(&task.job).await?;
        if let Some((v, p)) = &entry.params
            && *v == task.params_version
        {
            return Ok(p.clone());
        }
        let params = Arc::new(aggs.fetch(task).await?);
        entry.params = Some((task.params_version, params.clone()));
        Ok(params)
    }

    /// Reads and decodes the shards a task needs that are not cached yet; returns how many it
    /// read.
    pub async fn load_shards(&mut self, task: &Task, job: &TaskJob) -> Result<u64, WorkerError> {
        let entry = self.job(job).await?;
        let mut read = 0u64;
        for sample in &task.samples {
            let key = (job.split.clone(), sample.shard);
            if entry.shards.contains_key(&key) {
                continue;
            }
            let shard = load_shard(
                &entry.dataset,
                &entry.manifest,
                &job.split,
                sample.shard as usize,
            )
            .await?;
            read += 1;
            entry.shards.insert(key, Arc::new(shard));
        }
        Ok(read)
    }

    /// The task's samples as a batch (raw pixels, labels, dropout masks for training), from
    /// shards loaded by [`Cache::load_shards`].
    pub fn batch(&self, task: &Task, job: &TaskJob) -> Result<BatchInput, WorkerError> {
        let train = task.kind == TaskKind::Train;
        let entry = self
            .jobs
            .get(&job.job_id)
            .ok_or_else(|| WorkerError::Config(format!("job {} is not loaded", job.job_id)))?;
        let model = &entry.model;
        let mut batch = BatchBuilder::new(model, &entry.manifest.image, task.samples.len());
        let dropout = (train && model.dropout > 0.0).then_some(model.dropout);
        let features = model.dropout_features();
        for sample in &task.samples {
            let shard = entry
                .shards
                .get(&(job.split.clone(), sample.shard))
                .ok_or_else(|| {
                    WorkerError::Config(format!("shard {} is not loaded", sample.shard))
                })?;
            let row = sample.row as usize;
            if row >= shard.ids.len() {
                return Err(Error::dataset(
                    entry.dataset.as_str(),
                    format!(
                        "split {} shard {} has no row {row}",
                        job.split, sample.shard
                    ),
                )
                .into());
            }
            let id = &shard.ids[row];
            let draw = (train && !model.input.augment.is_off())
                .then(|| model.input.augment.draw(job.seed, task.epoch, id));
            batch.push(shard, row, draw.as_ref())?;
            if let Some(p) = dropout {
                batch.push_keep_mask(&dropout_keep_mask(
                    p,
                    features,
                    job.seed,
                    task.epoch,
                    task.step.0,
                    id,
                ));
            }
        }
        Ok(batch.finish())
    }
}
