//! The registry of live workers and their leases.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ctcluster_common::WorkerId;

/// What the coordinator knows of one worker.
#[derive(Clone, Debug)]
pub struct WorkerEntry {
    /// Name the worker gave (host, pid).
    pub name: String,
    /// Its compute device.
    pub device: String,
    /// When it last spoke.
    pub last_seen: Instant,
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

    /// Adds a worker; returns its new id.
    pub fn register(&self, name: String, device: String) -> WorkerId {
        let mut r = self.lock();
        r.next_id += 1;
        let id = WorkerId(r.next_id);
        r.workers.insert(
            id,
            WorkerEntry {
                name,
                device,
                last_seen: Instant::now(),
            },
        );
        id
    }

    /// Renews a worker's lease; false if it is not registered.
    pub fn touch(&self, id: WorkerId) -> bool {
        match self.lock().workers.get_mut(&id) {
            Some(w) => {
                w.last_seen = Instant::now();
                true
            }
            None => false,
        }
    }

    /// Removes a worker; true if it was there.
    pub fn remove(&self, id: WorkerId) -> bool {
        self.lock().workers.remove(&id).is_some()
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

    /// How many workers are registered.
    pub fn count(&self) -> usize {
        self.lock().workers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silent_workers_expire_and_live_ones_stay() {
        let reg = WorkerRegistry::default();
        let a = reg.register("a".into(), "cpu".into());
        let b = reg.register("b".into(), "cpu".into());
        assert_ne!(a, b);
        std::thread::sleep(Duration::from_millis(30));
        assert!(reg.touch(b));
        let gone = reg.expire(Duration::from_millis(20));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].0, a);
        assert_eq!(reg.count(), 1);
        assert!(!reg.touch(a));
    }
}
