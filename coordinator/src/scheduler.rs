//! The task queue: tasks wait here until a worker fetches them, and go back to the front of the
//! queue when their worker is lost or their result is rejected.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use crate::ewma::Ewma;
use ctcluster_common::dtype::GradientDtype;
use ctcluster_common::task::{FailureKind, Task, TaskFailure, TaskKind};
use ctcluster_common::telemetry::TraceCarrier;
use ctcluster_common::{JobId, Step, TaskId, WorkerId};
use tokio::sync::{Notify, mpsc};
// Tokio's clock, so that leases of tasks and straggler timing run under paused time in tests.
use tokio::time::Instant;

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
    /// Evaluation: counts of (true, predicted) class, row-major (empty for training).
    pub confusion: Vec<u32>,
    /// Evaluation: each sample's class probabilities, row-major (empty for training).
    pub probs: Vec<f32>,
    /// Evaluation: each sample's label (empty for training).
    pub labels: Vec<u32>,
    /// The job's slot the gradient holds until the round has folded it (none without a
    /// gradient).
    pub slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// Where a round's spans hang in the job's trace.
#[derive(Clone, Debug, Default)]
pub struct RoundTrace {
    /// Parent for the workers' spans: the step's span when the step is traced in detail,
    /// else empty (workers then record nothing).
    pub tasks: TraceCarrier,
    /// Parent for failure spans, which are always recorded: the step's span or the epoch's.
    pub failures: TraceCarrier,
}

/// What a job's driver receives for each task: its result, or why it could not be computed.
pub type TaskOutcome = Result<TaskResult, TaskFailure>;

/// Failures of one task before its job is failed, when they happened on this many different
/// workers (or on every registered worker, if fewer are registered).
pub const MAX_TASK_FAILURES: u32 = 3;
/// Failures of one task after which its job is failed whichever workers they came from (one
/// faulty worker can hold a task back only this long).
pub const MAX_TASK_TRIES: u32 = 3 * MAX_TASK_FAILURES;
/// Failures for a lost aggregator after which a task's job gets the error (an aggregator that
/// answers but always refuses; a lost one is noticed by the job's watch within a second).
pub const MAX_AGGREGATOR_FAILURES: u32 = 100;
/// A task outstanding this many times longer than tasks usually take is a straggler...
pub const STRAGGLER_FACTOR: f64 = 4.0;
/// ...and at least this long.
pub const STRAGGLER_MIN: Duration = Duration::from_secs(1);

struct Pending {
    job: JobId,
    task: Task,
    reply: mpsc::UnboundedSender<TaskOutcome>,
    /// Workers computing it now, with when they got it: one, or two once re-issued.
    holders: Vec<(WorkerId, Instant)>,
    failures: u32,
    /// Failures for a lost aggregator (not counted in `failures`).
    aggregator_failures: u32,
    /// The different workers it failed on.
    failed_on: Vec<WorkerId>,
    trace: RoundTrace,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    queue: VecDeque<TaskId>,
    pending: HashMap<TaskId, Pending>,
    /// Smoothed seconds from hand-out to result, for spotting stragglers.
    typical_secs: Ewma,
    /// Workers holding no task that are waiting for one (with how many polls each).
    idle: HashMap<WorkerId, usize>,
}

impl Inner {
    /// Drops a holder; a task nobody holds any more goes back to the front of the queue.
    fn drop_holder(&mut self, task: TaskId, worker: WorkerId) {
        if let Some(p) = self.pending.get_mut(&task) {
            let before = p.holders.len();
            p.holders.retain(|(w, _)| *w != worker);
            if p.holders.is_empty() && before > 0 {
                self.queue.push_front(task);
            }
        }
    }

    fn holds_any(&self, worker: WorkerId) -> bool {
        self.pending
            .values()
            .any(|p| p.holders.iter().any(|(w, _)| *w == worker))
    }

    /// A worker that already holds a task (it asks for the next one while computing) waits
    /// while a worker with nothing to do is asking too: idle workers go first.
    fn defer(&self, worker: WorkerId) -> bool {
        self.holds_any(worker) && self.idle.iter().any(|(w, n)| *w != worker && *n > 0)
    }

    fn straggler_after(&self) -> Duration {
        let typical = self.typical_secs.get().map_or(Duration::ZERO, |s| {
            Duration::from_secs_f64(s * STRAGGLER_FACTOR)
        });
        typical.max(STRAGGLER_MIN)
    }
}

/// What the push handler needs to check a result before accepting it.
#[derive(Debug, Clone)]
pub struct Expected {
    /// The task's job.
    pub job: JobId,
    /// The step it belongs to.
    pub step: Step,
    /// Training or evaluation.
    pub kind: TaskKind,
    /// Gradient length expected (0 for evaluation, and for training with aggregators).
    pub gradient_len: u64,
    /// The encoding of its values the task asked for.
    pub gradient_dtype: GradientDtype,
    /// Samples in the task.
    pub samples: u32,
    /// Evaluation tasks: the model's classes (probabilities per sample).
    pub classes: Option<usize>,
    /// When the task was handed to this worker.
    pub handed_out: Instant,
    /// Parent for the span recording a failure of this task.
    pub failure_trace: TraceCarrier,
}

/// A task handed to a worker.
#[derive(Debug)]
pub struct Handout {
    /// The task.
    pub task: Task,
    /// Its job.
    pub job: JobId,
    /// True when it is a second copy of a straggling task (the first result wins).
    pub reissued: bool,
    /// Parent for the worker's spans (empty: not traced).
    pub trace: TraceCarrier,
}

/// Marks a worker holding no task as waiting while it polls; on the way out it wakes the
/// other pollers, who may have deferred to it.
struct IdleGuard<'a> {
    scheduler: &'a Scheduler,
    worker: Option<WorkerId>,
}

impl<'a> IdleGuard<'a> {
    fn new(scheduler: &'a Scheduler, worker: WorkerId) -> Self {
        let mut g = scheduler.lock();
        let idle = !g.holds_any(worker);
        if idle {
            *g.idle.entry(worker).or_default() += 1;
        }
        IdleGuard {
            scheduler,
            worker: idle.then_some(worker),
        }
    }
}

impl Drop for IdleGuard<'_> {
    fn drop(&mut self) {
        let Some(worker) = self.worker else {
            return;
        };
        let mut g = self.scheduler.lock();
        if let Some(n) = g.idle.get_mut(&worker) {
            *n -= 1;
            if *n == 0 {
                g.idle.remove(&worker);
            }
        }
        let waiting = !g.queue.is_empty();
        drop(g);
        if waiting {
            self.scheduler.notify.notify_waiters();
        }
    }
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
        tasks: Vec<Task>,
        trace: &RoundTrace,
        reply: &mpsc::UnboundedSender<TaskOutcome>,
    ) -> Vec<TaskId> {
        let mut g = self.lock();
        let mut ids = Vec::with_capacity(tasks.len());
        for mut task in tasks {
            g.next_id += 1;
            let id = TaskId(g.next_id);
            task.id = id;
            g.pending.insert(
                id,
                Pending {
                    job: job.clone(),
                    task,
                    reply: reply.clone(),
                    holders: Vec::new(),
                    failures: 0,
                    aggregator_failures: 0,
                    failed_on: Vec::new(),
                    trace: trace.clone(),
                },
            );
            g.queue.push_back(id);
            ids.push(id);
        }
        drop(g);
        self.notify.notify_waiters();
        ids
    }

    fn try_take(&self, worker: WorkerId) -> Option<Handout> {
        let mut g = self.lock();
        if g.defer(worker) {
            return None;
        }
        let now = Instant::now();
        while let Some(id) = g.queue.pop_front() {
            if let Some(p) = g.pending.get_mut(&id) {
                p.holders.push((worker, now));
                return Some(Handout {
                    task: p.task.clone(),
                    job: p.job.clone(),
                    reissued: false,
                    trace: p.trace.tasks.clone(),
                });
            }
        }
        // Nothing queued: give an idle worker a second copy of the oldest straggler.
        let after = g.straggler_after();
        let straggler = g
            .pending
            .iter()
            .filter(|(_, p)| {
                matches!(p.holders.as_slice(), [(w, since)] if *w != worker && now.duration_since(*since) > after)
            })
            .min_by_key(|(id, _)| **id)
            .map(|(id, _)| *id)?;
        let p = g.pending.get_mut(&straggler)?;
        p.holders.push((worker, now));
        Some(Handout {
            task: p.task.clone(),
            job: p.job.clone(),
            reissued: true,
            trace: p.trace.tasks.clone(),
        })
    }

    /// The next task for a worker, waiting up to `wait` for one to arrive. Stragglers are
    /// looked for again every quarter of a second while waiting.
    pub async fn next_for(&self, worker: WorkerId, wait: Duration) -> Option<Handout> {
        let deadline = tokio::time::Instant::now() + wait;
        let _idle = IdleGuard::new(self, worker);
        loop {
            let notified = self.notify.notified();
            if let Some(t) = self.try_take(worker) {
                return Some(t);
            }
            let recheck = (tokio::time::Instant::now() + Duration::from_millis(250)).min(deadline);
            if tokio::time::timeout_at(recheck, notified).await.is_err() && recheck >= deadline {
                return None;
            }
        }
    }

    /// What a result for `task` from `worker` must look like; `None` if the task is not
    /// outstanding with that worker (finished already, cancelled, or re-assigned).
    pub fn expected(&self, task: TaskId, worker: WorkerId) -> Option<Expected> {
        let g = self.lock();
        let p = g.pending.get(&task)?;
        let (_, handed_out) = *p.holders.iter().find(|(w, _)| *w == worker)?;
        Some(Expected {
            handed_out,
            job: p.job.clone(),
            step: p.task.step,
            kind: p.task.kind,
            gradient_len: p.task.gradient_len(),
            gradient_dtype: p.task.job.gradient_dtype,
            samples: u32::try_from(p.task.samples.len()).unwrap_or(u32::MAX),
            classes: match p.task.kind {
                TaskKind::Eval => p.task.job.classes().ok(),
                TaskKind::Train => None,
            },
            failure_trace: p.trace.failures.clone(),
        })
    }

    /// Delivers a result; false if the task is no longer outstanding (the first result wins).
    pub fn complete(&self, result: TaskResult) -> bool {
        let mut g = self.lock();
        let Some(p) = g.pending.remove(&result.task) else {
            return false;
        };
        if let Some((_, since)) = p.holders.iter().find(|(w, _)| *w == result.worker) {
            let secs = since.elapsed().as_secs_f64();
            g.typical_secs.add(secs);
        }
        drop(g);
        p.reply.send(Ok(result)).is_ok()
    }

    /// A worker could not compute a task. A failure of the input itself
    /// ([`FailureKind::BadInput`]: a corrupt shard) goes to the job at once: every worker would
    /// fail the same way. Any other is retried (on any worker) until it has failed
    /// [`MAX_TASK_FAILURES`] times on that many different workers (on all `live` workers when
    /// fewer are registered), or [`MAX_TASK_TRIES`] times in all; then its job gets the error.
    pub fn fail(&self, task: TaskId, worker: WorkerId, failure: TaskFailure, live: usize) {
        let mut g = self.lock();
        let Some(p) = g.pending.get_mut(&task) else {
            return;
        };
        if !p.holders.iter().any(|(w, _)| *w == worker) {
            return;
        }
        let give_up = if failure.kind == FailureKind::Aggregator {
            // The job's aggregator watch decides; these are bounded on their own.
            p.aggregator_failures += 1;
            p.aggregator_failures >= MAX_AGGREGATOR_FAILURES
        } else {
            p.failures += 1;
            if !p.failed_on.contains(&worker) {
                p.failed_on.push(worker);
            }
            let spread = p.failed_on.len() >= live.clamp(1, MAX_TASK_FAILURES as usize);
            match failure.kind {
                FailureKind::BadInput => true,
                FailureKind::Retryable | FailureKind::Aggregator => {
                    (p.failures >= MAX_TASK_FAILURES && spread) || p.failures >= MAX_TASK_TRIES
                }
            }
        };
        if give_up {
            if let Some(p) = g.pending.remove(&task) {
                let _ = p.reply.send(Err(failure));
            }
            return;
        }
        g.drop_holder(task, worker);
        drop(g);
        self.notify.notify_waiters();
    }

    /// A worker's result was rejected: the task goes back to the front of the queue unless
    /// another worker is still computing it. A refusal counts as a failure of the task, so a
    /// task whose results are refused [`MAX_TASK_FAILURES`] times (a gradient that is never
    /// finite, a worker that always answers wrongly) fails its job with the reason instead of
    /// being computed again without end.
    pub fn retry(&self, task: TaskId, worker: WorkerId, reason: &str, live: usize) {
        let failure = TaskFailure::retryable(format!("result refused: {reason}"));
        self.fail(task, worker, failure, live);
    }

    /// Re-queues every task a lost worker held alone; returns the job of each.
    pub fn release_worker(&self, worker: WorkerId) -> Vec<JobId> {
        let mut g = self.lock();
        let mut ids: Vec<TaskId> = g
            .pending
            .iter()
            .filter(|(_, p)| p.holders.iter().any(|(w, _)| *w == worker))
            .map(|(id, _)| *id)
            .collect();
        // Highest id first, so that after push_front the lowest stands at the front.
        ids.sort_unstable_by(|a, b| b.cmp(a));
        let jobs = ids
            .iter()
            .filter_map(|id| g.pending.get(id).map(|p| p.job.clone()))
            .collect();
        for id in &ids {
            g.drop_holder(*id, worker);
        }
        drop(g);
        self.notify.notify_waiters();
        jobs
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
    //! Under paused time: tokio's clock only moves when every task waits, so the long polls,
    //! the straggler threshold and the 250 ms rechecks take no real time and do not depend on
    //! the machine's load.

    use std::sync::Arc;

    use ctcluster_common::task::{SampleRef, TaskJob, TaskKind};

    use super::*;

    fn result(task: TaskId, worker: WorkerId) -> TaskResult {
        TaskResult {
            task,
            worker,
            samples: 1,
            loss_sum: 0.5,
            correct: 1,
            gradient: vec![0.0; 10],
            confusion: Vec::new(),
            probs: Vec::new(),
            labels: Vec::new(),
            slot: None,
        }
    }

    fn task(job: &JobId, step: u64) -> Task {
        Task {
            id: TaskId(0),
            kind: TaskKind::Train,
            job: Arc::new(TaskJob {
                job_id: job.clone(),
                dataset_url: "memory://d".into(),
                model_json: "{}".into(),
                seed: 1,
                split: "train".into(),
                gradient_dtype: ctcluster_common::dtype::GradientDtype::F32,
                shards: Vec::new(),
            }),
            epoch: 0,
            step: Step(step),
            params_version: step,
            num_params: 10,
            samples: vec![SampleRef { shard: 0, row: 1 }],
            micro_batch_size: 1,
            block: None,
        }
    }

    const POLL: Duration = Duration::from_millis(10);

    #[tokio::test(start_paused = true)]
    async fn lost_workers_tasks_go_to_others_and_first_result_wins() {
        let s = Scheduler::default();
        let job = JobId::generate();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let ids = s.submit(
            &job,
            vec![task(&job, 1), task(&job, 1)],
            &RoundTrace::default(),
            &tx,
        );
        let (a, b) = (WorkerId(1), WorkerId(2));
        let t1 = s.next_for(a, POLL).await.unwrap().task;
        assert_eq!(t1.id, ids[0]);
        assert_eq!(s.release_worker(a), vec![job.clone()]);
        let again = s.next_for(b, POLL).await.unwrap().task;
        assert_eq!(again.id, ids[0], "the lost task goes first");
        assert!(
            s.expected(ids[0], a).is_none(),
            "the old holder's result is not expected"
        );
        let exp = s.expected(ids[0], b).unwrap();
        assert_eq!((exp.step, exp.gradient_len, exp.samples), (Step(1), 10, 1));
        assert!(s.complete(result(ids[0], b)));
        assert!(
            !s.complete(result(ids[0], a)),
            "a late duplicate is discarded"
        );
        assert_eq!(rx.recv().await.unwrap().unwrap().worker, b);
        s.forget_job(&job);
        assert!(s.next_for(a, POLL).await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_retryable_failure_is_tried_again_and_reaches_the_job_when_it_persists() {
        let s = Scheduler::default();
        let job = JobId::generate();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let ids = s.submit(&job, vec![task(&job, 2)], &RoundTrace::default(), &tx);
        let a = WorkerId(1);
        for i in 0..MAX_TASK_FAILURES {
            assert!(rx.try_recv().is_err(), "given up after {i} failures");
            let t = s.next_for(a, POLL).await.unwrap().task;
            assert_eq!(t.id, ids[0], "tried again");
            s.fail(t.id, a, TaskFailure::retryable("storage unreachable"), 1);
        }
        let err = rx.recv().await.unwrap().unwrap_err();
        assert_eq!(err, TaskFailure::retryable("storage unreachable"));
        assert!(s.expected(ids[0], a).is_none());
        assert!(s.next_for(a, POLL).await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_bad_input_failure_is_not_retried() {
        let s = Scheduler::default();
        let job = JobId::generate();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let ids = s.submit(&job, vec![task(&job, 2)], &RoundTrace::default(), &tx);
        let a = WorkerId(1);
        let t = s.next_for(a, POLL).await.unwrap().task;
        s.fail(t.id, a, TaskFailure::bad_input("shard 0: truncated"), 3);
        let err = rx.recv().await.unwrap().unwrap_err();
        assert_eq!(err.kind, FailureKind::BadInput);
        assert!(s.expected(ids[0], a).is_none());
        assert!(
            s.next_for(WorkerId(2), POLL).await.is_none(),
            "not queued again for another worker"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_whose_results_are_always_refused_fails_its_job() {
        let s = Scheduler::default();
        let job = JobId::generate();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let ids = s.submit(&job, vec![task(&job, 1)], &RoundTrace::default(), &tx);
        let (a, b) = (WorkerId(1), WorkerId(2));
        for i in 0..MAX_TASK_FAILURES {
            let w = if i % 2 == 0 { a } else { b };
            let t = s.next_for(w, POLL).await.unwrap().task;
            assert_eq!(t.id, ids[0]);
            assert!(rx.try_recv().is_err(), "not failed after {i} refusals");
            s.retry(t.id, w, "gradient value 3 is NaN", 2);
        }
        let err = rx.recv().await.unwrap().unwrap_err();
        assert!(
            err.message.contains("result refused") && err.message.contains("NaN"),
            "{err}"
        );
        assert!(
            s.next_for(a, POLL).await.is_none(),
            "nothing is queued again"
        );
        // One faulty worker among healthy ones cannot fail a job before MAX_TASK_TRIES.
        let ids = s.submit(&job, vec![task(&job, 2)], &RoundTrace::default(), &tx);
        for i in 0..MAX_TASK_TRIES {
            let t = s.next_for(a, POLL).await.unwrap().task;
            assert_eq!(t.id, ids[0]);
            assert!(
                rx.try_recv().is_err(),
                "failed after {i} refusals by one of 3 workers"
            );
            s.retry(t.id, a, "NaN", 3);
        }
        assert!(rx.recv().await.unwrap().is_err(), "bounded all the same");
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_asking_ahead_waits_while_an_idle_worker_asks() {
        let s = Arc::new(Scheduler::default());
        let job = JobId::generate();
        let (tx, _rx) = mpsc::unbounded_channel();
        let (busy, idle) = (WorkerId(1), WorkerId(2));
        s.submit(&job, vec![task(&job, 1)], &RoundTrace::default(), &tx);
        s.next_for(busy, POLL).await.unwrap();
        // The idle worker is waiting when the busy one asks for its next task.
        let waiting = {
            let s = s.clone();
            tokio::spawn(async move { s.next_for(idle, Duration::from_secs(2)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let ahead = {
            let s = s.clone();
            tokio::spawn(async move { s.next_for(busy, Duration::from_secs(2)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let ids = s.submit(
            &job,
            vec![task(&job, 1), task(&job, 1)],
            &RoundTrace::default(),
            &tx,
        );
        let asked = tokio::time::Instant::now();
        let got = waiting.await.unwrap().unwrap();
        assert_eq!(got.task.id, ids[0], "the idle worker goes first");
        // Once it has its task, the worker asking ahead gets the next one at once, not at its
        // next 250 ms recheck.
        let next = ahead.await.unwrap().unwrap();
        assert_eq!(next.task.id, ids[1]);
        assert!(
            asked.elapsed() < Duration::from_millis(250),
            "{:?}",
            asked.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_worker_gets_a_copy_of_a_straggler_and_the_first_result_wins() {
        let s = Scheduler::default();
        let job = JobId::generate();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let ids = s.submit(&job, vec![task(&job, 1)], &RoundTrace::default(), &tx);
        let (slow, idle) = (WorkerId(1), WorkerId(2));
        let handed_out = tokio::time::Instant::now();
        assert!(!s.next_for(slow, POLL).await.unwrap().reissued);
        // Not yet a straggler: nothing for the idle worker, however long it polls short of it.
        assert!(
            s.next_for(idle, STRAGGLER_MIN - Duration::from_millis(100))
                .await
                .is_none()
        );
        let copy = s.next_for(idle, Duration::from_secs(60)).await.unwrap();
        let after = handed_out.elapsed();
        assert!(copy.reissued);
        assert_eq!(copy.task.id, ids[0]);
        // Re-issued once past the threshold, at the first 250 ms recheck after it.
        assert!(
            after > STRAGGLER_MIN && after <= STRAGGLER_MIN + Duration::from_millis(250),
            "{after:?}"
        );
        assert!(s.expected(ids[0], slow).is_some() && s.expected(ids[0], idle).is_some());
        assert!(s.complete(result(ids[0], idle)));
        assert!(!s.complete(result(ids[0], slow)));
        assert_eq!(rx.recv().await.unwrap().unwrap().worker, idle);
    }

    #[tokio::test(start_paused = true)]
    async fn the_straggler_threshold_follows_how_long_tasks_usually_take() {
        let s = Scheduler::default();
        let job = JobId::generate();
        let (tx, _rx) = mpsc::unbounded_channel();
        let (a, b) = (WorkerId(1), WorkerId(2));
        // Tasks that take 2 s each make the typical time 2 s: a straggler only after 8 s.
        for _ in 0..3 {
            let ids = s.submit(&job, vec![task(&job, 1)], &RoundTrace::default(), &tx);
            s.next_for(a, POLL).await.unwrap();
            tokio::time::sleep(Duration::from_secs(2)).await;
            assert!(s.complete(result(ids[0], a)));
        }
        s.submit(&job, vec![task(&job, 2)], &RoundTrace::default(), &tx);
        let handed_out = tokio::time::Instant::now();
        s.next_for(a, POLL).await.unwrap();
        let copy = s.next_for(b, Duration::from_secs(60)).await.unwrap();
        let after = handed_out.elapsed();
        assert!(copy.reissued);
        let threshold = Duration::from_secs_f64(2.0 * STRAGGLER_FACTOR);
        assert!(
            after > threshold && after <= threshold + Duration::from_millis(250),
            "{after:?}"
        );
    }
}
