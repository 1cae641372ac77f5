//! `ctcluster-chaos`: train on real processes while killing workers and the coordinator, then
//! report what was lost and whether the result is exact. Needs the workspace's binaries built
//! (`cargo build --release --workspace --bins`).

use clap::Parser;
use ctcluster_tests::chaos::{ChaosOptions, run};

/// Chaos run options.
#[derive(Debug, Parser)]
#[command(
    name = "ctcluster-chaos",
    about = "Kill workers and the coordinator during a job; check nothing is lost"
)]
struct Args {
    /// Folder for the run's data (default: a temporary folder).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Workers kept running.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Worker SIGKILLs over the job.
    #[arg(long, default_value_t = 5)]
    worker_kills: usize,
    /// Coordinator SIGKILLs over the job.
    #[arg(long, default_value_t = 1)]
    coordinator_kills: usize,
    /// Training images.
    #[arg(long, default_value_t = 960)]
    train: usize,
    /// Epochs.
    #[arg(long, default_value_t = 3)]
    epochs: u32,
    /// Seed of the job and of the kill schedule.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Micro-batches a worker is handed as one task in the disturbed run (summed on the
    /// worker); the undisturbed run always uses 1, so equality also checks pre-reduction.
    #[arg(long, default_value_t = 2)]
    micro_batches_per_task: u32,
    /// Skip the undisturbed comparison run.
    #[arg(long)]
    no_compare: bool,
}

#[tokio::main]
async fn main() {
    let a = Args::parse();
    let tmp = tempfile::tempdir().expect("temporary folder");
    let dir = a.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir).expect("create --dir");
    let opts = ChaosOptions {
        dir,
        workers: a.workers,
        worker_kills: a.worker_kills,
        coordinator_kills: a.coordinator_kills,
        train: a.train,
        epochs: a.epochs,
        seed: a.seed,
        micro_batches_per_task: a.micro_batches_per_task,
        compare: !a.no_compare,
    };
    let report = run(&opts).await;
    println!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
    let exact =
        report.audit.iter().all(|e| e.exactly_once) && report.equals_undisturbed != Some(false);
    if report.state != "succeeded" || !exact {
        std::process::exit(1);
    }
}
