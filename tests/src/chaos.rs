//! The chaos runner: a training job on real processes (a coordinator and workers) while random
//! workers and the coordinator are killed with SIGKILL and restarted. It reports kills,
//! recoveries, progress lost, whether every training sample was used exactly once per epoch,
//! and whether the result equals an undisturbed run of the same spec.
//!
//! As a command: `cargo run --release -p ctcluster-tests --bin ctcluster-chaos -- --help`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ctcluster_common::audit::StepAudit;
use ctcluster_common::checkpoint::Checkpoint;
use ctcluster_common::dataset::{SynthOptions, write_synthetic};
use ctcluster_common::rng::KeyedRng;
use ctcluster_common::storage::StoreUrl;
use ctcluster_proto as pb;
use pb::client_service_client::ClientServiceClient;
use serde::Serialize;
use tonic::transport::Channel;

use crate::procs::{Proc, restart_coordinator, start_coordinator, start_worker};
use ctctl::render::is_terminal;

/// What to run and what to break.
#[derive(Clone, Debug)]
pub struct ChaosOptions {
    /// Folder for the dataset, checkpoints and records.
    pub dir: PathBuf,
    /// Workers kept running (each killed one is replaced).
    pub workers: usize,
    /// Worker kills over the job.
    pub worker_kills: usize,
    /// Coordinator kills over the job.
    pub coordinator_kills: usize,
    /// Training images in the generated dataset.
    pub train: usize,
    /// Epochs.
    pub epochs: u32,
    /// Seed of the job and of the kill schedule.
    pub seed: u64,
    /// Micro-batches a worker is handed as one task in the disturbed run (the undisturbed one
    /// uses 1).
    pub micro_batches_per_task: u32,
    /// Also run the job undisturbed and compare the final parameters.
    pub compare: bool,
}

/// One epoch's audit.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct EpochAudit {
    /// The epoch.
    pub epoch: u32,
    /// Training samples in the job.
    pub train_samples: usize,
    /// Distinct samples used in the epoch's applied steps.
    pub distinct: usize,
    /// Samples used more than once.
    pub duplicated: usize,
    /// True when every training sample was used exactly once.
    pub exactly_once: bool,
}

/// What the chaos run saw.
#[derive(Clone, Debug, Serialize)]
pub struct ChaosReport {
    /// Worker processes SIGKILLed.
    pub worker_kills: usize,
    /// Coordinator SIGKILLs.
    pub coordinator_kills: usize,
    /// Seconds from each worker kill until the job had taken one more step.
    pub worker_recovery_seconds: Vec<f64>,
    /// For each coordinator kill: steps redone (taken before the kill, after the checkpoint the
    /// restart resumed from), and those steps in seconds at the job's pace.
    pub coordinator_steps_lost: Vec<u64>,
    /// Seconds of progress lost to coordinator kills.
    pub coordinator_seconds_lost: Vec<f64>,
    /// Seconds from each coordinator kill (restart at once) until the job had taken one more
    /// step.
    pub coordinator_recovery_seconds: Vec<f64>,
    /// Final state of the job.
    pub state: String,
    /// Steps taken.
    pub steps: u64,
    /// Per-epoch sample audit.
    pub audit: Vec<EpochAudit>,
    /// Whether the final parameters are bit-identical to an undisturbed run (if compared).
    pub equals_undisturbed: Option<bool>,
    /// Whether a `ctctl watch` started at submit followed the job through every kill and
    /// exited successfully with the job's final state.
    pub watch_followed_to_the_end: bool,
}

struct Cluster {
    port: u16,
    state: String,
    coordinator: Option<Proc>,
    workers: Vec<Proc>,
    started: usize,
}

impl Cluster {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the coordinator: on a port it picks the first time (port 0), on the same port
    /// after, where the workers already point.
    fn start_coordinator(&mut self) {
        let extra = ["--heartbeat-ms", "200", "--worker-lease-ms", "1000"];
        let state = Path::new(&self.state);
        self.coordinator = Some(if self.port == 0 {
            let (p, listening) = start_coordinator(state, &extra);
            self.port = listening.port;
            p
        } else {
            restart_coordinator(self.port, state, &extra)
        });
    }

    fn start_worker(&mut self) -> Proc {
        self.started += 1;
        start_worker(&self.url(), &format!("chaos-{}", self.started), &[], &[])
    }
}

/// A client of the coordinator at `url`, retrying for 30 s while it is not up.
pub async fn client(url: &str) -> ClientServiceClient<Channel> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match ClientServiceClient::connect(url.to_string()).await {
            Ok(c) => return c,
            Err(e) => assert!(Instant::now() < deadline, "cannot reach {url}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A job's status, retrying for 60 s while the coordinator is not up.
pub async fn status(url: &str, job: &str) -> pb::JobStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut c = client(url).await;
        match c.get_job(pb::GetJobRequest { job_id: job.into() }).await {
            Ok(s) => return s.into_inner(),
            Err(e) => assert!(Instant::now() < deadline, "no status for {job}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Submits a spec; panics if it is refused.
pub async fn submit(url: &str, spec_yaml: String) -> String {
    client(url)
        .await
        .submit(pb::SubmitRequest { spec_yaml })
        .await
        .expect("submit")
        .into_inner()
        .job_id
}

/// Waits (at most 10 min) until a job reaches `step` or ends.
pub async fn wait_step(url: &str, job: &str, step: u64) -> pb::JobStatus {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let s = status(url, job).await;
        if s.step >= step || is_terminal(s.state) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "job {job} stuck at step {}",
            s.step
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until a job ends.
pub async fn wait_end(url: &str, job: &str) -> pb::JobStatus {
    loop {
        let s = wait_step(url, job, u64::MAX).await;
        if is_terminal(s.state) {
            return s;
        }
    }
}

fn spec(opts: &ChaosOptions, dataset: &str, output: &str, per_task: u32) -> String {
    format!(
        "name: chaos\ndataset: {dataset}\noutput: {output}\nbatch_size: 32\nmicro_batch_size: 8\n\
         micro_batches_per_task: {per_task}\nepochs: {}\nseed: {}\n\
         model:\n  dropout: 0.5\nvalidation:\n  fraction: 0.1\ncheckpoint:\n  every_steps: 5\n  keep: 2\naudit: true\n",
        opts.epochs, opts.seed
    )
}

/// Uses of each (shard, row) in one epoch.
type SampleCounts = HashMap<(u32, u32), u32>;

/// Reads the audit files of a job and checks every epoch used every sample exactly once.
pub async fn audit(job_output: &StoreUrl) -> Vec<EpochAudit> {
    let mut epochs: BTreeMap<u32, (usize, SampleCounts)> = BTreeMap::new();
    for record in StepAudit::read_all(job_output).await.unwrap() {
        let entry = epochs
            .entry(record.epoch)
            .or_insert_with(|| (record.train_samples, HashMap::new()));
        for [shard, row] in record.samples {
            *entry.1.entry((shard, row)).or_default() += 1;
        }
    }
    epochs
        .into_iter()
        .map(|(epoch, (train_samples, counts))| {
            let duplicated = counts.values().filter(|&&c| c > 1).count();
            EpochAudit {
                epoch,
                train_samples,
                distinct: counts.len(),
                duplicated,
                exactly_once: duplicated == 0 && counts.len() == train_samples,
            }
        })
        .collect()
}

/// Waits (bounded) for the watcher to exit; true if it exited 0 having printed the final
/// state.
async fn watched_to_the_end(mut watcher: Proc, state: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        match watcher.0.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ => return false,
        }
    };
    let mut out = String::new();
    if let Some(mut stdout) = watcher.0.stdout.take() {
        use std::io::Read;
        let _ = stdout.read_to_string(&mut out);
    }
    status.success() && out.contains(&format!("state      {state}"))
}

/// Runs the chaos scenario; panics if the cluster cannot be started at all.
pub async fn run(opts: &ChaosOptions) -> ChaosReport {
    let root = opts.dir.display().to_string();
    let dataset = StoreUrl::parse(&format!("{root}/ds")).unwrap();
    let synth = SynthOptions {
        train: opts.train,
        test: 16,
        size: 28,
        seed: opts.seed,
    };
    write_synthetic(&dataset, synth).await.unwrap();
    let mut cluster = Cluster {
        port: 0,
        state: format!("{root}/state"),
        coordinator: None,
        workers: Vec::new(),
        started: 0,
    };
    cluster.start_coordinator();
    for _ in 0..opts.workers {
        let w = cluster.start_worker();
        cluster.workers.push(w);
    }
    let url = cluster.url();
    let job = submit(
        &url,
        spec(
            opts,
            dataset.as_str(),
            &format!("{root}/chaos"),
            opts.micro_batches_per_task,
        ),
    )
    .await;
    // A user following the job: it must ride out the coordinator kills.
    let watcher = Proc(
        std::process::Command::new(crate::procs::binary("ctctl"))
            .args(["--insecure", "--coordinator", &url, "watch", &job])
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start ctctl watch"),
    );
    let total = loop {
        let s = status(&url, &job).await;
        if s.total_steps > 0 {
            break s.total_steps;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    // The kill schedule: distinct random steps, each kill a worker or the coordinator.
    let mut rng = KeyedRng::new(opts.seed ^ 0xC4A05);
    let kills = opts.worker_kills + opts.coordinator_kills;
    let mut at: Vec<u64> = Vec::new();
    while at.len() < kills && total > 6 {
        let step = 3 + rng.below((total - 6) as usize) as u64;
        if !at.contains(&step) {
            at.push(step);
        }
    }
    at.sort_unstable();
    // Coordinator kills spread evenly among the kill points.
    let mut is_coordinator = vec![false; at.len()];
    let ck = opts.coordinator_kills.min(at.len());
    for i in 0..ck {
        is_coordinator[((2 * i + 1) * at.len()) / (2 * ck)] = true;
    }
    let mut report = ChaosReport {
        worker_kills: 0,
        coordinator_kills: 0,
        worker_recovery_seconds: Vec::new(),
        coordinator_steps_lost: Vec::new(),
        coordinator_seconds_lost: Vec::new(),
        coordinator_recovery_seconds: Vec::new(),
        state: String::new(),
        steps: 0,
        audit: Vec::new(),
        equals_undisturbed: None,
        watch_followed_to_the_end: false,
    };
    let audit_dir = StoreUrl::parse(&format!("{root}/chaos/{job}/audit")).unwrap();
    let started = Instant::now();
    for (step, coordinator) in at.into_iter().zip(is_coordinator) {
        let before = wait_step(&url, &job, step).await;
        if is_terminal(before.state) {
            break;
        }
        if coordinator {
            cluster.coordinator.as_mut().unwrap().kill();
            report.coordinator_kills += 1;
            // Steps applied when it died: the newest audit file (written after each step).
            let applied = audit_dir
                .list()
                .await
                .unwrap()
                .iter()
                .filter_map(|f| {
                    f.strip_prefix("step-")?
                        .strip_suffix(".json")?
                        .parse::<u64>()
                        .ok()
                })
                .max()
                .map_or(0, |n| n + 1);
            let pace = started.elapsed().as_secs_f64() / before.step.max(1) as f64;
            let restarted = Instant::now();
            cluster.start_coordinator();
            let from = loop {
                let s = status(&url, &job).await;
                if s.resumes > before.resumes {
                    break s.resumed_from_step.unwrap_or(0);
                }
                assert!(
                    restarted.elapsed() < Duration::from_secs(60),
                    "the job was not resumed"
                );
                tokio::time::sleep(Duration::from_millis(25)).await;
            };
            let redone = applied.max(before.step).saturating_sub(from);
            report.coordinator_steps_lost.push(redone);
            report.coordinator_seconds_lost.push(redone as f64 * pace);
            wait_step(&url, &job, from + 1).await;
            report
                .coordinator_recovery_seconds
                .push(restarted.elapsed().as_secs_f64());
        } else {
            let victim = rng.below(cluster.workers.len());
            cluster.workers[victim].kill();
            report.worker_kills += 1;
            let killed = Instant::now();
            let replacement = cluster.start_worker();
            cluster.workers[victim] = replacement;
            wait_step(&url, &job, before.step + 1).await;
            report
                .worker_recovery_seconds
                .push(killed.elapsed().as_secs_f64());
        }
    }
    let end = wait_end(&url, &job).await;
    report.state = ctctl::render::state_name(end.state).to_string();
    report.steps = end.step;
    let job_output = StoreUrl::parse(&format!("{root}/chaos/{job}")).unwrap();
    report.audit = audit(&job_output).await;
    report.watch_followed_to_the_end = watched_to_the_end(watcher, &report.state).await;
    if opts.compare && report.state == "succeeded" {
        let calm = submit(
            &url,
            spec(opts, dataset.as_str(), &format!("{root}/calm"), 1),
        )
        .await;
        let calm_end = wait_end(&url, &calm).await;
        let load = |s: &pb::JobStatus| {
            let url = StoreUrl::parse(&s.checkpoint).unwrap();
            async move { Checkpoint::load(&url).await.unwrap() }
        };
        let (a, b) = (load(&end).await, load(&calm_end).await);
        report.equals_undisturbed =
            Some(a.params == b.params && a.adam == b.adam && a.state.step == b.state.step);
    }
    for w in &mut cluster.workers {
        w.terminate("worker");
    }
    if let Some(c) = cluster.coordinator.as_mut() {
        c.terminate("coordinator");
    }
    report
}
