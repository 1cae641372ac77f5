//! Tasks on the wire.

use std::sync::Arc;

use ctcluster_proto as pb;

use crate::dtype::GradientDtype;
use crate::reduce_tree::node_of;
use crate::shards::{ShardRoute, check_routes};
use crate::spec::MAX_MICRO_BATCHES_PER_TASK;
use crate::task::{SampleRef, Task, TaskJob, TaskKind, TreeBlock};
use crate::{Error, JobId, Step, TaskId};

/// Most samples one task may name (a micro-batch or an evaluation batch is far smaller).
pub const MAX_TASK_SAMPLES: usize = 1 << 16;

impl From<TaskKind> for pb::TaskKind {
    fn from(k: TaskKind) -> Self {
        match k {
            TaskKind::Train => pb::TaskKind::Train,
            TaskKind::Eval => pb::TaskKind::Eval,
        }
    }
}

impl TryFrom<i32> for TaskKind {
    type Error = Error;

    fn try_from(raw: i32) -> Result<Self, Error> {
        match pb::TaskKind::try_from(raw) {
            Ok(pb::TaskKind::Train) => Ok(TaskKind::Train),
            Ok(pb::TaskKind::Eval) => Ok(TaskKind::Eval),
            Ok(pb::TaskKind::Unspecified) | Err(_) => Err(Error::invalid(
                "task.kind",
                format!("{raw} is not a task kind this worker knows (train, eval)"),
            )),
        }
    }
}

impl From<GradientDtype> for pb::GradientDtype {
    fn from(d: GradientDtype) -> Self {
        match d {
            GradientDtype::F32 => pb::GradientDtype::F32,
            GradientDtype::Bf16 => pb::GradientDtype::Bf16,
        }
    }
}

impl TryFrom<i32> for GradientDtype {
    type Error = Error;

    /// An unknown format is refused: decoding its bytes as another would give wrong values.
    fn try_from(raw: i32) -> Result<Self, Error> {
        match pb::GradientDtype::try_from(raw) {
            Ok(pb::GradientDtype::F32) => Ok(GradientDtype::F32),
            Ok(pb::GradientDtype::Bf16) => Ok(GradientDtype::Bf16),
            Err(_) => Err(Error::invalid(
                "gradient_dtype",
                format!("{raw} is not a gradient format this build knows (f32, bf16)"),
            )),
        }
    }
}

impl From<SampleRef> for pb::SampleRef {
    fn from(s: SampleRef) -> Self {
        pb::SampleRef {
            shard: s.shard,
            row: s.row,
        }
    }
}

impl From<pb::SampleRef> for SampleRef {
    fn from(s: pb::SampleRef) -> Self {
        SampleRef {
            shard: s.shard,
            row: s.row,
        }
    }
}

impl From<&TaskJob> for pb::TaskJob {
    fn from(j: &TaskJob) -> Self {
        pb::TaskJob {
            job_id: j.job_id.to_string(),
            dataset_url: j.dataset_url.clone(),
            model_json: j.model_json.clone(),
            seed: j.seed,
            split: j.split.clone(),
            gradient_dtype: pb::GradientDtype::from(j.gradient_dtype) as i32,
            shards: j
                .shards
                .iter()
                .map(|r| pb::ShardRoute {
                    url: r.url.clone(),
                    offset: r.offset,
                    len: r.len,
                })
                .collect(),
        }
    }
}

impl TryFrom<pb::TaskJob> for TaskJob {
    type Error = Error;

    fn try_from(j: pb::TaskJob) -> Result<Self, Error> {
        let non_empty = |field: &str, v: String| {
            if v.is_empty() {
                Err(Error::invalid(field, "missing"))
            } else {
                Ok(v)
            }
        };
        Ok(TaskJob {
            job_id: JobId::try_from(j.job_id)?,
            dataset_url: non_empty("task.job.dataset_url", j.dataset_url)?,
            model_json: non_empty("task.job.model_json", j.model_json)?,
            seed: j.seed,
            split: non_empty("task.job.split", j.split)?,
            gradient_dtype: GradientDtype::try_from(j.gradient_dtype)?,
            // Checked against the task's parameter count where the task is read.
            shards: j
                .shards
                .into_iter()
                .map(|r| ShardRoute {
                    url: r.url,
                    offset: r.offset,
                    len: r.len,
                })
                .collect(),
        })
    }
}

impl From<&Task> for pb::Task {
    fn from(t: &Task) -> Self {
        pb::Task {
            task_id: t.id.0,
            kind: pb::TaskKind::from(t.kind) as i32,
            job: Some(pb::TaskJob::from(t.job.as_ref())),
            epoch: t.epoch,
            step: t.step.0,
            params_version: t.params_version,
            num_params: t.num_params,
            samples: t.samples.iter().map(|&s| s.into()).collect(),
            micro_batch_size: t.micro_batch_size,
            block_first: t.block.map_or(0, |b| b.first),
            step_leaves: t.block.map_or(0, |b| b.leaves),
        }
    }
}

impl TryFrom<pb::Task> for Task {
    type Error = Error;

    fn try_from(t: pb::Task) -> Result<Self, Error> {
        let kind = TaskKind::try_from(t.kind)?;
        let job = t
            .job
            .ok_or_else(|| Error::invalid("task.job", "missing"))?
            .try_into()?;
        if t.samples.is_empty() || t.samples.len() > MAX_TASK_SAMPLES {
            return Err(Error::invalid(
                "task.samples",
                format!(
                    "{} samples; a task has 1 to {MAX_TASK_SAMPLES}",
                    t.samples.len()
                ),
            ));
        }
        if kind == TaskKind::Train && t.num_params == 0 {
            return Err(Error::invalid(
                "task.num_params",
                "a training task needs the parameter count",
            ));
        }
        // 0: the whole task is one micro-batch (what a coordinator that predates pre-reduction
        // sends).
        let micro_batch_size = match t.micro_batch_size {
            0 => t.samples.len() as u32,
            m if m as usize <= t.samples.len() => m,
            m => {
                return Err(Error::invalid(
                    "task.micro_batch_size",
                    format!("{m} is more than the task's {} samples", t.samples.len()),
                ));
            }
        };
        let micro_batches = t.samples.len().div_ceil(micro_batch_size as usize);
        if micro_batches > MAX_MICRO_BATCHES_PER_TASK as usize {
            return Err(Error::invalid(
                "task.micro_batch_size",
                format!(
                    "{micro_batches} micro-batches of {micro_batch_size}; a task has at most \
                     {MAX_MICRO_BATCHES_PER_TASK}"
                ),
            ));
        }
        let job: TaskJob = job;
        check_routes(&job.shards, t.num_params, "task.job.shards")?;
        let block = match (t.step_leaves, kind, job.shards.is_empty()) {
            (0, _, true) | (0, TaskKind::Eval, _) => None,
            (0, TaskKind::Train, false) => {
                return Err(Error::invalid(
                    "task.step_leaves",
                    "a training task with aggregators needs its place in the reduction tree",
                ));
            }
            (leaves, _, _) => {
                // The block must be a node of the step's tree (aligned, inside it).
                let count = micro_batches as u32;
                node_of(t.block_first, count, leaves)
                    .map_err(|e| Error::invalid("task.block_first", e.to_string()))?;
                Some(TreeBlock {
                    first: t.block_first,
                    leaves,
                })
            }
        };
        Ok(Task {
            id: TaskId(t.task_id),
            kind,
            job: Arc::new(job),
            epoch: t.epoch,
            step: Step(t.step),
            params_version: t.params_version,
            num_params: t.num_params,
            samples: t.samples.into_iter().map(SampleRef::from).collect(),
            micro_batch_size,
            block,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> Task {
        Task {
            id: TaskId(7),
            kind: TaskKind::Eval,
            job: Arc::new(TaskJob {
                job_id: JobId::generate(),
                dataset_url: "memory://d".into(),
                model_json: "{}".into(),
                seed: 3,
                split: "val".into(),
                gradient_dtype: GradientDtype::Bf16,
                shards: Vec::new(),
            }),
            epoch: 1,
            step: Step(9),
            params_version: 9,
            num_params: 100,
            samples: vec![SampleRef { shard: 2, row: 5 }],
            micro_batch_size: 1,
            block: None,
        }
    }

    #[test]
    fn tasks_round_trip() {
        let t = task();
        assert_eq!(Task::try_from(pb::Task::from(&t)).unwrap(), t);
    }

    #[test]
    fn unknown_kinds_missing_jobs_and_empty_tasks_are_refused() {
        let field = |p: pb::Task| match Task::try_from(p) {
            Err(Error::Invalid { field, .. }) => field,
            other => panic!("accepted or wrong error: {other:?}"),
        };
        let mut p = pb::Task::from(&task());
        p.kind = 7;
        assert_eq!(field(p), "task.kind");
        let mut p = pb::Task::from(&task());
        p.kind = pb::TaskKind::Unspecified as i32;
        assert_eq!(field(p), "task.kind");
        let mut p = pb::Task::from(&task());
        p.job = None;
        assert_eq!(field(p), "task.job");
        let mut p = pb::Task::from(&task());
        p.samples.clear();
        assert_eq!(field(p), "task.samples");
        let mut p = pb::Task::from(&task());
        p.job.as_mut().unwrap().job_id = "../x".into();
        assert_eq!(field(p), "job_id");
        let mut p = pb::Task::from(&task());
        p.kind = pb::TaskKind::Train as i32;
        p.num_params = 0;
        assert_eq!(field(p), "task.num_params");
        let mut p = pb::Task::from(&task());
        p.micro_batch_size = 2;
        assert_eq!(field(p), "task.micro_batch_size");
        let mut p = pb::Task::from(&task());
        p.samples = vec![p.samples[0]; 2000];
        p.micro_batch_size = 1;
        assert_eq!(field(p), "task.micro_batch_size");
        // A coordinator that predates micro-batches per task sends 0: one micro-batch.
        let mut p = pb::Task::from(&task());
        p.samples = vec![p.samples[0]; 40];
        p.micro_batch_size = 0;
        assert_eq!(Task::try_from(p).unwrap().micro_batch_size, 40);
    }

    /// A sharded training task: four micro-batches at 4..8 of a 12-leaf step, parameters on two
    /// aggregators.
    fn sharded() -> Task {
        let mut t = task();
        let mut job = (*t.job).clone();
        job.shards = crate::shards::routes(&["http://a:1".into(), "http://b:2".into()], 100);
        t.job = Arc::new(job);
        t.kind = TaskKind::Train;
        t.samples = vec![t.samples[0]; 16];
        t.micro_batch_size = 4;
        t.block = Some(TreeBlock {
            first: 4,
            leaves: 12,
        });
        t
    }

    #[test]
    fn sharded_tasks_round_trip_and_bad_routes_or_blocks_are_refused() {
        let t = sharded();
        assert_eq!(t.gradient_len(), 0, "the gradient goes to the aggregators");
        assert_eq!(Task::try_from(pb::Task::from(&t)).unwrap(), t);
        let field = |p: pb::Task| match Task::try_from(p) {
            Err(Error::Invalid { field, .. }) => field,
            other => panic!("accepted or wrong error: {other:?}"),
        };
        let mut p = pb::Task::from(&t);
        p.num_params = 101;
        assert_eq!(field(p), "task.job.shards");
        let mut p = pb::Task::from(&t);
        p.step_leaves = 0;
        assert_eq!(field(p), "task.step_leaves");
        // Not aligned: a block of four starts at a multiple of four.
        let mut p = pb::Task::from(&t);
        p.block_first = 2;
        assert_eq!(field(p), "task.block_first");
        // Past the step's leaves.
        let mut p = pb::Task::from(&t);
        p.block_first = 12;
        assert_eq!(field(p), "task.block_first");
    }
}
