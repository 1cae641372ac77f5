//! The worker's command line and validated configuration.

use clap::Parser;

/// Command-line arguments of `ctcluster-worker`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "ctcluster-worker",
    version,
    about = "ctcluster's GPU/CPU worker"
)]
pub struct Args {
    /// The coordinator's URL.
    #[arg(long, env = "CT_COORDINATOR", default_value = "http://127.0.0.1:50051")]
    pub coordinator: String,
    /// Name shown in status tables (default: host name and process id).
    #[arg(long, env = "CT_WORKER_NAME")]
    pub name: Option<String>,
    /// Compute device: `cpu` (pure-Rust burn-flex backend).
    #[arg(long, env = "CT_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Fault injection for tests (off by default): replace every Nth training gradient with NaN.
    #[arg(long, env = "CT_FAULT_NAN_EVERY", hide = true)]
    pub fault_nan_every: Option<u64>,
    /// Fault injection for tests (off by default): sleep this long before computing each task.
    #[arg(long, env = "CT_FAULT_DELAY_MS", hide = true)]
    pub fault_delay_ms: Option<u64>,
}

/// Deliberate faults, for testing how the cluster copes. All off by default.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Every Nth training result carries a NaN gradient.
    pub nan_every: Option<u64>,
    /// Every task is delayed this long (a slow worker).
    pub delay: Option<std::time::Duration>,
}

/// Validated worker settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The coordinator's URL.
    pub coordinator: String,
    /// Display name.
    pub name: String,
    /// Device name, as given.
    pub device: String,
    /// Deliberate faults (tests only).
    pub faults: Faults,
}

impl TryFrom<&Args> for WorkerConfig {
    type Error = crate::WorkerError;

    fn try_from(a: &Args) -> Result<Self, Self::Error> {
        crate::device::parse_device(&a.device)?;
        if !(a.coordinator.starts_with("http://") || a.coordinator.starts_with("https://")) {
            return Err(crate::WorkerError::Config(format!(
                "--coordinator {:?} must be an http:// or https:// URL",
                a.coordinator
            )));
        }
        let name = a.name.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into());
            format!("{host}-{}", std::process::id())
        });
        if a.fault_nan_every == Some(0) {
            return Err(crate::WorkerError::Config(
                "--fault-nan-every must be at least 1".into(),
            ));
        }
        Ok(WorkerConfig {
            coordinator: a.coordinator.clone(),
            name,
            device: a.device.clone(),
            faults: Faults {
                nan_every: a.fault_nan_every,
                delay: a.fault_delay_ms.map(std::time::Duration::from_millis),
            },
        })
    }
}
