//! The task queue: tasks wait here until a worker fetches them, and go back to the front of the
//! queue when their worker is lost or their result is rejected.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ctcluster_common::{JobId, TaskId, WorkerId};
use ctcluster_proto as pb;
use tokio::sync::{Notify, mpsc};

/// A validated result of one task, on its way to the job that asked for it.
#[derive(Debug)]
pub struct TaskResult {
    /// The task.
    pub task: TaskId,
    /// Who computed it.
    pub worker: WorkerId,
    /// Samples it covered.
    pub samples: u32,
    /// Summed loss.
    pub loss_sum: f64,
    /// Correct predictions.
    pub correct: u32,
    /// Gradient of the summed loss (empty for evaluation).
    pub gradient: Vec<f32>,
}

/// What a job's driver receives for each task: its result, or why it could not be computed.
pub type TaskOutcome = Result<TaskResult, String>;

/// Failures of one task (on any worker) before its job is failed.
pub const MAX_TASK_FAILURES: u32 = 3;

struct Pending {
    job: JobId,
    task: pb::Task,
    reply: mpsc::UnboundedSender<TaskOutcome>,
    assigned: Option<(WorkerId, Instant)>,
    failures: u32,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    queue: VecDeque<TaskId>,
    pending: HashMap<TaskId, Pending>,
}

/// What the push handler needs to check a result before accepting it.
#[derive(Debug, Clone)]
pub struct Expected {
    /// The task's job.
    pub job: JobId,
    /// The step it belongs to.
    pub step: u64,
    /// Gradient length expected (0 for evaluation).
    pub gradient_len: u64,
    /// Samples in the task.
    pub samples: u32,
}

/// The coordinator's queue of tasks.
#[derive(Default)]
pub struct Scheduler {
    inner: Mutex<Inner>,
    notify: Notify,
}

impl Scheduler {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues tasks (their `task_id` is assigned here); results go to `reply`. Returns the ids
    /// in the order given.
    pub fn submit(
        &self,
        job: &JobId,
        tasks: Vec<pb::Task>,
        reply: &mpsc::UnboundedSender<TaskOutcome>,
    ) -> Vec<TaskId> {
        let mut g = self.lock();
        let mut ids = Vec::with_capacity(tasks.len());
        for mut task in tasks {
            g.next_id += 1;
            let id = TaskId(g.next_id);
            task.task_id = id.0;
            g.pending.insert(
                id,
                Pending {
                    job: job.clone(),
                    task,
                    reply: reply.clone(),
                    assigned: None,
                    failures: 0,
                },
            );
            g.queue.push_back(id);
            ids.push(id);
        }
        drop(g);
        self.notify.notify_waiters();
        ids
    }

    fn try_take(&self, worker: WorkerId) -> Option<pb::Task> {
        let mut g = self.lock();
        while let Some(id) = g.queue.pop_front() {
            if let Some(p) = g.pending.get_mut(&id) {
                p.assigned = Some((worker, Instant::now()));
                return Some(p.task.clone());
            }
        }
        None
    }

    /// The next task for a worker, waiting up to `wait` for one to arrive.
    pub async fn next_for(&self, worker: WorkerId, wait: Duration) -> Option<pb::Task> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.notify.notified();
            if let Some(t) = self.try_take(worker) {
                return Some(t);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    /// What a result for `task` from `worker` must look like; `None` if the task is not
    /// outstanding with that worker (finished already, cancelled, or re-assigned).
    pub fn expected(&self, task: TaskId, worker: WorkerId) -> Option<Expected> {
        let g = self.lock();
        let p = g.pending.get(&task)?;
        match p.assigned {
            Some((w, _)) if w == worker => Some(Expected {
                job: p.job.clone(),
                step: p.task.step,
                gradient_len: if p.task.kind == pb::TaskKind::Train as i32 {
                    p.task.num_params
                } else {
                    0
                },
                samples: u32::try_from(p.task.samples.len()).unwrap_or(u32::MAX),
            }),
            _ => None,
        }
    }

    /// Delivers a result; false if the task is no longer outstanding (the first result wins).
    pub fn complete(&self, result: TaskResult) -> bool {
        let pending = self.lock().pending.remove(&result.task);
        match pending {
            Some(p) => p.reply.send(Ok(result)).is_ok(),
            None => false,
        }
    }

    /// A worker could not compute a task: it is retried (on any worker) until it has failed
    /// [`MAX_TASK_FAILURES`] times, then its job gets the error.
    pub fn fail(&self, task: TaskId, worker: WorkerId, error: String) {
        let mut g = self.lock();
        let Some(p) = g.pending.get_mut(&task) else {
            return;
        };
        if !matches!(p.assigned, Some((w, _)) if w == worker) {
            return;
        }
        p.failures += 1;
        if p.failures >= MAX_TASK_FAILURES {
            if let Some(p) = g.pending.remove(&task) {
                let _ = p.reply.send(Err(error));
            }
            return;
        }
        p.assigned = None;
        g.queue.push_back(task);
        drop(g);
        self.notify.notify_waiters();
    }

    /// Puts a task back at the front of the queue (its result was rejected).
    pub fn retry(&self, task: TaskId) {
        let mut g = self.lock();
        if let Some(p) = g.pending.get_mut(&task) {
            p.assigned = None;
            g.queue.push_front(task);
        }
        drop(g);
        self.notify.notify_waiters();
    }

    /// Re-queues every task a lost worker held; returns how many.
    pub fn release_worker(&self, worker: WorkerId) -> usize {
        let mut g = self.lock();
        let mut ids: Vec<TaskId> = g
            .pending
            .iter()
            .filter(|(_, p)| matches!(p.assigned, Some((w, _)) if w == worker))
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        for id in ids.iter().rev() {
            if let Some(p) = g.pending.get_mut(id) {
                p.assigned = None;
            }
            g.queue.push_front(*id);
        }
        drop(g);
        self.notify.notify_waiters();
        ids.len()
    }

    /// Drops every outstanding task of a job (cancelled or failed).
    pub fn forget_job(&self, job: &JobId) {
        let mut g = self.lock();
        g.pending.retain(|_, p| &p.job != job);
        let Inner { queue, pending, .. } = &mut *g;
        queue.retain(|id| pending.contains_key(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(step: u64) -> pb::Task {
        pb::Task {
            kind: pb::TaskKind::Train as i32,
            step,
            num_params: 10,
            samples: vec![pb::SampleRef { shard: 0, row: 1 }],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn lost_workers_tasks_go_to_others_and_first_result_wins() {
        let s = Scheduler::default();
        let job = JobId::generate();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let ids = s.submit(&job, vec![task(1), task(1)], &tx);
        let (a, b) = (WorkerId(1), WorkerId(2));
        let t1 = s.next_for(a, Duration::from_millis(10)).await.unwrap();
        assert_eq!(t1.task_id, ids[0].0);
        assert_eq!(s.release_worker(a), 1);
        let again = s.next_for(b, Duration::from_millis(10)).await.unwrap();
        assert_eq!(again.task_id, ids[0].0, "the lost task goes first");
        assert!(
            s.expected(ids[0], a).is_none(),
            "the old holder's result is not expected"
        );
        let exp = s.expected(ids[0], b).unwrap();
        assert_eq!((exp.step, exp.gradient_len, exp.samples), (1, 10, 1));
        let result = |worker| TaskResult {
            task: ids[0],
            worker,
            samples: 1,
            loss_sum: 0.5,
            correct: 1,
            gradient: vec![0.0; 10],
        };
        assert!(s.complete(result(b)));
        assert!(!s.complete(result(a)), "a late duplicate is discarded");
        assert_eq!(rx.recv().await.unwrap().unwrap().worker, b);
        s.forget_job(&job);
        assert!(s.next_for(a, Duration::from_millis(10)).await.is_none());
        // A task that keeps failing reaches its job as an error.
        let ids = s.submit(&job, vec![task(2)], &tx);
        for _ in 0..MAX_TASK_FAILURES {
            let t = s.next_for(a, Duration::from_millis(10)).await.unwrap();
            s.fail(TaskId(t.task_id), a, "corrupt shard".into());
        }
        assert_eq!(rx.recv().await.unwrap().unwrap_err(), "corrupt shard");
        assert!(s.expected(ids[0], a).is_none());
        assert!(s.next_for(a, Duration::from_millis(10)).await.is_none());
    }
}
