//! `ctctl demo`: the whole system on one machine. Generates a small dataset, starts a coordinator
//! and workers on loopback (real gRPC), trains, shows progress, and reports where the model is.

use std::time::Duration;

use ctcluster_common::dataset::{HeadCtOptions, MANIFEST_FILE, write_head_ct};
use ctcluster_common::evaluate::evaluate;
use ctcluster_common::job::JobState;
use ctcluster_common::storage::StoreUrl;
use ctcluster_coordinator::CoordinatorConfig;
use ctcluster_coordinator::auth::Security;
use ctcluster_coordinator::scope::StorageScope;
use ctcluster_worker::WorkerConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cli::DemoArgs;
use crate::render::{job_state, state_name};
use crate::{CtlError, jobs, watch};

fn demo_err(e: impl std::fmt::Display) -> CtlError {
    CtlError::Demo(e.to_string())
}

/// The demo's job spec.
pub fn demo_spec(data: &str, output: &str, epochs: u32) -> String {
    format!(
        "name: demo-head-ct-triage\n\
         dataset: {data}\n\
         model:\n  name: seed-cnn\n  dropout: 0.5\n\
         preprocess:\n  window: brain\n\
         augment:\n  crop_padding: 2\n  hflip: true\n\
         batch_size: 64\n\
         micro_batch_size: 32\n\
         epochs: {epochs}\n\
         optimizer:\n  lr: 0.001\n\
         seed: 42\n\
         validation:\n  fraction: 0.15\n\
         checkpoint:\n  every_steps: 50\n  keep: 2\n\
         output: {output}\n"
    )
}

/// Runs the demo; returns the closing summary.
pub async fn run(args: &DemoArgs) -> Result<String, CtlError> {
    if args.workers == 0 {
        return Err(CtlError::Usage("--workers must be at least 1".into()));
    }
    std::fs::create_dir_all(&args.dir).map_err(CtlError::write(&args.dir))?;
    let dir = args
        .dir
        .canonicalize()
        .map_err(|e| CtlError::Usage(format!("{}: {e}", args.dir.display())))?;
    let data = StoreUrl::parse(&dir.join("head-ct").display().to_string())?;
    let output = StoreUrl::parse(&dir.join("output").display().to_string())?;
    let state = StoreUrl::parse(&dir.join("state").display().to_string())?;
    if !data.join(MANIFEST_FILE)?.exists().await? {
        println!(
            "generating a synthetic head-CT dataset (Hounsfield units; normal, haemorrhage, ischaemia) in {data}"
        );
        write_head_ct(&data, HeadCtOptions::default(), None).await?;
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(demo_err)?;
    let addr = listener.local_addr().map_err(demo_err)?;
    // Secure like a real cluster: a fresh CA, TLS, worker certificates, an admin token.
    let tls = super::local_tls(&crate::certs::generate(&crate::certs::BundleSpec {
        workers: args.workers,
        ..Default::default()
    })?)?;
    let url = format!("https://{addr}");
    let target = crate::Target::secure(&url, tls.ca_pem.clone(), &tls.admin_token);
    let stop_coordinator = CancellationToken::new();
    let stop_workers = CancellationToken::new();
    let tasks = TaskTracker::new();
    {
        let stop = stop_coordinator.clone();
        let mut config = CoordinatorConfig::local(state);
        config.security = Security::tls(&tls.users).map_err(demo_err)?;
        config.tls = Some(tls.coordinator.clone());
        config.scope =
            StorageScope::new(&[data.as_str().to_string()], &[output.as_str().to_string()])
                .map_err(demo_err)?
                .protecting_state(config.state_url.as_str());
        tasks.spawn(async move {
            if let Err(e) =
                ctcluster_coordinator::serve(listener, config, stop.cancelled_owned()).await
            {
                eprintln!("coordinator: {e}");
            }
        });
    }
    for (i, identity) in tls.workers.iter().enumerate() {
        let config = WorkerConfig {
            coordinator: url.clone(),
            name: format!("demo-worker-{i}"),
            device: "cpu".into(),
            faults: Default::default(),
            tls: Some(identity.clone()),
            prefetch: true,
            health_listen: None,
            addr_file: None,
        };
        let stop = stop_workers.clone();
        tasks.spawn(async move {
            if let Err(e) = ctcluster_worker::run_worker(config, stop).await {
                eprintln!("worker: {e}");
            }
        });
    }
    println!(
        "coordinator on {url} (TLS, worker certificates, token) with {} workers",
        args.workers
    );

    let outcome = async {
        let id = jobs::submit_text(&target, demo_spec(data.as_str(), output.as_str(), args.epochs)).await?;
        println!("submitted job {id}");
        let status = watch::watch(&target, &id).await?;
        if job_state(status.state) != Some(JobState::Succeeded) {
            return Err(CtlError::JobDidNotSucceed {
                id,
                state: state_name(status.state).into(),
                message: status.message,
            });
        }
        let test = evaluate(&status.model, data.as_str(), "test").await?;
        let val = status.metrics.and_then(|m| m.val_accuracy).unwrap_or(f64::NAN);
        let report_dir = dir.join("report");
        crate::report::report(&target, &id, &report_dir).await?;
        Ok(format!(
            "job {id} succeeded in {} steps\nvalidation accuracy {val:.4}\ntest accuracy       {:.4} (ROC-AUC {:.4}) on {} held-out images\ncheckpoint {}\nmodel      {}\nreport     {}\n",
            status.step,
            test.accuracy,
            test.roc_auc.unwrap_or(f64::NAN),
            test.samples,
            status.checkpoint,
            status.model,
            report_dir.join("index.html").display()
        ))
    }
    .await;

    stop_workers.cancel();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop_coordinator.cancel();
    tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(10), tasks.wait()).await;
    outcome
}
