//! Job commands: submit, status, list, cancel.

use std::path::Path;

use ctcluster_common::telemetry::{carrier_of, carrier_to_metadata};
use ctcluster_common::trace_span;
use ctcluster_proto as pb;
use tracing::Instrument;
use tracing::field::Empty;

use crate::CtlError;
use crate::cli::Format;
use crate::connect::{Target, connect};
use crate::render::{StatusJson, list_text, status_text, workers_text};

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// Reads a spec file and submits it; returns the job id.
pub async fn submit(coordinator: &Target, file: &Path) -> Result<String, CtlError> {
    let spec_yaml = std::fs::read_to_string(file)
        .map_err(|e| CtlError::Usage(format!("{}: {e}", file.display())))?;
    submit_text(coordinator, spec_yaml).await
}

/// Submits a spec unless the coordinator already has an unfinished job of its name, whose id
/// is then returned instead: a submit step that runs again (a restarted or re-admitted
/// Kubernetes JobSet, a rerun batch script) follows the job it started, which the coordinator
/// resumed from its checkpoint, instead of starting a second one.
pub async fn submit_once(coordinator: &Target, file: &Path) -> Result<String, CtlError> {
    let spec_yaml = std::fs::read_to_string(file)
        .map_err(|e| CtlError::Usage(format!("{}: {e}", file.display())))?;
    let name = ctcluster_common::spec::JobSpec::from_yaml(&spec_yaml)
        .map_err(|e| CtlError::Usage(format!("{}: {e}", file.display())))?
        .name;
    let mut c = connect(coordinator).await?;
    let jobs = c.list_jobs(pb::ListJobsRequest {}).await?.into_inner().jobs;
    let running: Vec<&pb::JobStatus> = jobs
        .iter()
        .filter(|j| j.name == name && !crate::render::is_terminal(j.state))
        .collect();
    match running.as_slice() {
        [] => submit_text(coordinator, spec_yaml).await,
        [one] => {
            eprintln!(
                "ctctl: job {} ({name}) is already running; following it",
                one.id
            );
            Ok(one.id.clone())
        }
        many => Err(CtlError::Usage(format!(
            "--once: {} unfinished jobs are named {name:?} ({}); cancel all but one",
            many.len(),
            many.iter()
                .map(|j| j.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Submits a spec given as text; returns the job id. When traces are exported this is where
/// the job's trace starts: the coordinator's job span is a child of this `submit` span.
pub async fn submit_text(coordinator: &Target, spec_yaml: String) -> Result<String, CtlError> {
    let span = trace_span!("submit", otel.kind = "client", job.id = Empty);
    let mut request = tonic::Request::new(pb::SubmitRequest { spec_yaml });
    carrier_to_metadata(&carrier_of(&span), request.metadata_mut());
    let id = async {
        let mut c = connect(coordinator).await?;
        Ok::<_, CtlError>(c.submit(request).await?.into_inner().job_id)
    }
    .instrument(span.clone())
    .await?;
    span.record("job.id", id.as_str());
    Ok(id)
}

/// One job's status.
pub async fn get(coordinator: &Target, job: &str) -> Result<pb::JobStatus, CtlError> {
    let mut c = connect(coordinator).await?;
    Ok(c.get_job(pb::GetJobRequest {
        job_id: job.to_string(),
    })
    .await?
    .into_inner())
}

/// `ctctl status` output.
/// `ctctl status` output: the job, then the cluster's worker table.
pub async fn status(coordinator: &Target, job: &str, format: Format) -> Result<String, CtlError> {
    let s = get(coordinator, job).await?;
    let mut c = connect(coordinator).await?;
    let w = c
        .list_workers(pb::ListWorkersRequest {})
        .await?
        .into_inner();
    Ok(match format {
        Format::Json => {
            let mut v = serde_json::to_value(StatusJson::from(&s)).unwrap_or_default();
            v["worker_table"] = workers_json(&w)["workers"].take();
            json(&v)
        }
        Format::Table => format!("{}\n{}", status_text(&s), workers_text(&w)),
    })
}

fn workers_json(r: &pb::ListWorkersResponse) -> serde_json::Value {
    serde_json::json!({
        "workers": r.workers.iter().map(|w| serde_json::json!({
            "id": w.id, "name": w.name, "device": w.device, "last_seen_ms": w.last_seen_ms,
            "tasks": w.tasks, "images_per_sec": w.images_per_sec, "fetch_seconds": w.fetch_seconds,
            "compute_seconds": w.compute_seconds, "network_seconds": w.network_seconds,
        })).collect::<Vec<_>>(),
        "slowest_worker": (!r.slowest_worker.is_empty()).then_some(&r.slowest_worker),
        "slowest_reason": (!r.slowest_reason.is_empty()).then_some(&r.slowest_reason),
    })
}

/// `ctctl list` output.
pub async fn list(coordinator: &Target, format: Format) -> Result<String, CtlError> {
    let mut c = connect(coordinator).await?;
    let jobs = c.list_jobs(pb::ListJobsRequest {}).await?.into_inner().jobs;
    Ok(match format {
        Format::Json => json(&jobs.iter().map(StatusJson::from).collect::<Vec<_>>()),
        Format::Table => list_text(&jobs),
    })
}

/// `ctctl workers` output.
pub async fn workers(coordinator: &Target, format: Format) -> Result<String, CtlError> {
    let mut c = connect(coordinator).await?;
    let r = c
        .list_workers(pb::ListWorkersRequest {})
        .await?
        .into_inner();
    Ok(match format {
        Format::Json => json(&workers_json(&r)),
        Format::Table => workers_text(&r),
    })
}

/// `ctctl cancel` output.
pub async fn cancel(coordinator: &Target, job: &str) -> Result<String, CtlError> {
    let mut c = connect(coordinator).await?;
    let s = c
        .cancel_job(pb::CancelJobRequest {
            job_id: job.to_string(),
        })
        .await?
        .into_inner();
    Ok(format!("cancelling {}", s.id))
}
