//! The registry of live workers and their leases.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

// Tokio's clock: leases run under paused time in tests.
use tokio::time::Instant;

use ctcluster_common::WorkerId;

use crate::ewma::Ewma;

/// What the coordinator knows of one worker.
#[derive(Clone, Debug)]
pub struct WorkerEntry {
    /// Name the worker gave (host, pid).
    pub name: String,
    /// Who registered it: the common name of its client certificate (`anonymous` on an
    /// `--insecure` coordinator). Only that identity may speak for this worker id.
    pub identity: String,
    /// Its compute device.
    pub device: String,
    /// When it last spoke.
    pub last_seen: Instant,
    /// Where its time goes, over recent tasks.
    pub stats: WorkerStats,
}

/// A worker's recent tasks, smoothed (see [`Ewma`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkerStats {
    /// Results accepted.
    pub tasks: u64,
    /// Seconds per task getting parameters and data.
    pub fetch: Ewma,
    /// Seconds per task computing.
    pub compute: Ewma,
    /// Seconds per task neither (network, queueing): hand-out to result, less the two above.
    pub network: Ewma,
    /// Images per busy second.
    pub images_per_sec: Ewma,
}

impl WorkerStats {
    fn add(&mut self, images: u32, fetch: f64, compute: f64, total: f64) {
        self.fetch.add(fetch);
        self.compute.add(compute);
        self.network.add((total - fetch - compute).max(0.0));
        self.images_per_sec.add(f64::from(images) / total.max(1e-9));
        self.tasks += 1;
    }

    /// Seconds per task in all.
    pub fn per_task(&self) -> f64 {
        self.fetch.value() + self.compute.value() + self.network.value()
    }

    /// Where most of its time goes.
    pub fn main_cost(&self) -> &'static str {
        let (fetch, compute, network) = (
            self.fetch.value(),
            self.compute.value(),
            self.network.value(),
        );
        if compute >= fetch && compute >= network {
            "computing"
        } else if fetch >= network {
            "waiting for data"
        } else {
            "network and queueing"
        }
    }
}

/// The worker that stands out as slow, and why: taking at least three times the median time
/// per task (six times while it has finished fewer than three tasks).
pub fn slowest(workers: &[(WorkerId, WorkerEntry)]) -> Option<(String, String)> {
    let mut seen: Vec<&(WorkerId, WorkerEntry)> =
        workers.iter().filter(|(_, w)| w.stats.tasks >= 1).collect();
    if seen.len() < 2 {
        return None;
    }
    seen.sort_by(|a, b| a.1.stats.per_task().total_cmp(&b.1.stats.per_task()));
    // The baseline comes from workers with a few tasks behind them (all, if too few have).
    let steady: Vec<_> = seen.iter().filter(|(_, w)| w.stats.tasks >= 3).collect();
    let baseline: Vec<f64> = if steady.len() >= 2 {
        steady.iter().map(|(_, w)| w.stats.per_task()).collect()
    } else {
        seen.iter().map(|(_, w)| w.stats.per_task()).collect()
    };
    let median = baseline[(baseline.len() - 1) / 2];
    let (id, w) = seen[seen.len() - 1];
    let t = w.stats.per_task();
    // Three times the median stands out from noise on a shared machine; a worker with a
    // single slow task must stand out further.
    let factor = if w.stats.tasks >= 3 { 3.0 } else { 6.0 };
    (t >= factor * median).then(|| {
        (
            format!("{id} ({})", w.name),
            format!(
                "{}: {:.3} s a task against a median of {:.3} s (data {:.3} s, compute {:.3} s, network {:.3} s)",
                w.stats.main_cost(),
                t,
                median,
                w.stats.fetch.value(),
                w.stats.compute.value(),
                w.stats.network.value()
            ),
        )
    })
}

/// Most workers registered at once. (No cap per certificate: operators may give one
/// certificate to every worker of a node pool.)
pub const MAX_WORKERS: usize = 10_000;

/// Whether a worker id is registered, and to whom.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lease {
    /// Registered by the caller's identity.
    Held,
    /// Not registered (dropped, or the coordinator restarted).
    Unknown,
    /// Registered by another certificate: the caller may not speak for it.
    OtherIdentity,
}

/// Registered workers.
#[derive(Default)]
pub struct WorkerRegistry {
    inner: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    workers: HashMap<WorkerId, WorkerEntry>,
}

impl WorkerRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a worker registered by `identity`; returns its new id, or `None` past
    /// [`MAX_WORKERS`] registered workers (registrations of a process that restarted are
    /// dropped when their lease lapses).
    pub fn register(&self, name: String, device: String, identity: String) -> Option<WorkerId> {
        let mut r = self.lock();
        if r.workers.len() >= MAX_WORKERS {
            return None;
        }
        r.next_id += 1;
        let id = WorkerId(r.next_id);
        r.workers.insert(
            id,
            WorkerEntry {
                name,
                identity,
                device,
                last_seen: Instant::now(),
                stats: WorkerStats::default(),
            },
        );
        Some(id)
    }

    fn check(r: &Registry, id: WorkerId, identity: &str) -> Lease {
        match r.workers.get(&id) {
            None => Lease::Unknown,
            Some(w) if w.identity != identity => Lease::OtherIdentity,
            Some(_) => Lease::Held,
        }
    }

    /// Renews a worker's lease when `identity` is the one that registered it.
    pub fn touch(&self, id: WorkerId, identity: &str) -> Lease {
        let mut r = self.lock();
        let lease = Self::check(&r, id, identity);
        if lease == Lease::Held
            && let Some(w) = r.workers.get_mut(&id)
        {
            w.last_seen = Instant::now();
        }
        lease
    }

    /// Removes a worker when `identity` is the one that registered it.
    pub fn remove(&self, id: WorkerId, identity: &str) -> Lease {
        let mut r = self.lock();
        let lease = Self::check(&r, id, identity);
        if lease == Lease::Held {
            r.workers.remove(&id);
        }
        lease
    }

    /// Removes every worker silent for longer than `lease`; returns them.
    pub fn expire(&self, lease: Duration) -> Vec<(WorkerId, WorkerEntry)> {
        let mut r = self.lock();
        let now = Instant::now();
        let dead: Vec<WorkerId> = r
            .workers
            .iter()
            .filter(|(_, w)| now.duration_since(w.last_seen) > lease)
            .map(|(id, _)| *id)
            .collect();
        dead.into_iter()
            .filter_map(|id| r.workers.remove(&id).map(|w| (id, w)))
            .collect()
    }

    /// Records an accepted result's timings.
    pub fn record(&self, id: WorkerId, images: u32, fetch: f64, compute: f64, total: f64) {
        if let Some(w) = self.lock().workers.get_mut(&id) {
            w.stats.add(images, fetch, compute, total);
        }
    }

    /// Every registered worker, by id.
    pub fn snapshot(&self) -> Vec<(WorkerId, WorkerEntry)> {
        let mut v: Vec<_> = self
            .lock()
            .workers
            .iter()
            .map(|(id, w)| (*id, w.clone()))
            .collect();
        v.sort_by_key(|(id, _)| *id);
        v
    }

    /// How many workers are registered.
    pub fn count(&self) -> usize {
        self.lock().workers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn silent_workers_expire_and_live_ones_stay() {
        let reg = WorkerRegistry::default();
        let a = reg
            .register("a".into(), "cpu".into(), "worker-0".into())
            .unwrap();
        let b = reg
            .register("b".into(), "cpu".into(), "worker-1".into())
            .unwrap();
        assert_ne!(a, b);
        tokio::time::advance(Duration::from_millis(30)).await;
        assert_eq!(reg.touch(b, "worker-1"), Lease::Held);
        let gone = reg.expire(Duration::from_millis(20));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].0, a);
        assert_eq!(reg.count(), 1);
        assert_eq!(reg.touch(a, "worker-0"), Lease::Unknown);
        // Another certificate cannot renew or remove b.
        assert_eq!(reg.touch(b, "worker-0"), Lease::OtherIdentity);
        assert_eq!(reg.remove(b, "worker-0"), Lease::OtherIdentity);
        assert_eq!(reg.count(), 1);
        assert_eq!(reg.remove(b, "worker-1"), Lease::Held);
        assert_eq!(reg.count(), 0);
        // The registry is bounded; silent registrations make room when their lease lapses.
        for i in 0..MAX_WORKERS {
            assert!(
                reg.register(format!("r{i}"), "cpu".into(), "pool".into())
                    .is_some()
            );
        }
        assert!(
            reg.register("one more".into(), "cpu".into(), "pool".into())
                .is_none()
        );
        // A lease lapses only past its length, to the millisecond.
        tokio::time::advance(Duration::from_millis(20)).await;
        assert!(reg.expire(Duration::from_millis(20)).is_empty());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(reg.expire(Duration::from_millis(20)).len(), MAX_WORKERS);
        assert!(
            reg.register("c".into(), "cpu".into(), "worker-2".into())
                .is_some()
        );
    }

    #[test]
    fn the_slow_worker_is_named_with_its_main_cost() {
        let reg = WorkerRegistry::default();
        let ids: Vec<WorkerId> = (0..3)
            .map(|i| {
                reg.register(format!("w{i}"), "cpu".into(), "w".into())
                    .unwrap()
            })
            .collect();
        for _ in 0..5 {
            reg.record(ids[0], 32, 0.001, 0.020, 0.022);
            reg.record(ids[1], 32, 0.001, 0.021, 0.023);
            reg.record(ids[2], 32, 0.001, 0.300, 0.302);
        }
        let (who, why) = slowest(&reg.snapshot()).unwrap();
        assert!(who.contains("w2"), "{who}");
        assert!(why.starts_with("computing"), "{why}");
        reg.record(ids[2], 32, 0.900, 0.001, 0.902);
        for _ in 0..10 {
            reg.record(ids[2], 32, 0.900, 0.001, 0.902);
        }
        assert!(
            slowest(&reg.snapshot())
                .unwrap()
                .1
                .starts_with("waiting for data")
        );
        let even: Vec<_> = reg.snapshot().into_iter().take(2).collect();
        assert!(slowest(&even).is_none(), "no worker stands out");
    }

    #[test]
    fn noise_is_not_a_straggler_but_one_very_slow_task_is() {
        let reg = WorkerRegistry::default();
        let ids: Vec<WorkerId> = (0..3)
            .map(|i| {
                reg.register(format!("w{i}"), "cpu".into(), "w".into())
                    .unwrap()
            })
            .collect();
        for _ in 0..4 {
            reg.record(ids[0], 32, 0.001, 0.020, 0.022);
            reg.record(ids[1], 32, 0.001, 0.045, 0.047);
        }
        assert!(
            slowest(&reg.snapshot()).is_none(),
            "2x is noise on a busy machine"
        );
        reg.record(ids[2], 32, 0.001, 0.340, 0.342);
        let (who, _) = slowest(&reg.snapshot()).unwrap();
        assert!(who.contains("w2"), "{who}");
    }
}
