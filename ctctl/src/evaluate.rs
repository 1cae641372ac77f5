//! `ctctl evaluate`: on the cluster's workers (a job whose spec says `evaluate:`), or with
//! `--local` here on the CPU; both give the same report.

use ctcluster_common::card::model_dir;
use ctcluster_common::evaluate::{EvalReport, evaluate};
use ctcluster_common::job::JobState;
use ctcluster_common::spec::{EvaluateSpec, JobSpec};
use ctcluster_common::storage::StoreUrl;

use crate::CtlError;
use crate::connect::Target;

/// Largest report read back from storage.
const MAX_REPORT_BYTES: u64 = 64 << 20;

/// Where an evaluation job writes when not told: beside the job that made the model (the
/// folder holding the model's job folder).
pub fn default_output(model: &str) -> Result<String, CtlError> {
    let dir = model_dir(model)?;
    let text = dir.as_str().trim_end_matches('/');
    match text.rsplit_once('/') {
        Some((parent, _)) if parent.contains("://") && !parent.ends_with(':') => {
            Ok(parent.to_string())
        }
        _ => Err(CtlError::Usage(format!(
            "{model}: no folder above the model to write the report into; give --output"
        ))),
    }
}

/// The spec of a job that evaluates `model` on `split` of `dataset`.
pub fn spec(model: &str, dataset: &str, split: &str, output: &str) -> Result<String, CtlError> {
    let model = model_dir(model)?.as_str().to_string();
    let dataset = StoreUrl::parse(dataset)?.as_str().to_string();
    let output = StoreUrl::parse(output)?.as_str().to_string();
    let name = format!(
        "evaluate-{}",
        model
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or("model")
    );
    let spec = JobSpec::from_yaml(&format!(
        "name: {name:?}\ndataset: {dataset:?}\noutput: {output:?}\n"
    ))
    .map(|s| JobSpec {
        evaluate: Some(EvaluateSpec {
            model,
            split: split.to_string(),
        }),
        ..s
    })?;
    spec.validate()?;
    Ok(spec.to_yaml())
}

/// Evaluates on the cluster: submits the job, follows it to its end and reads its report.
pub async fn on_cluster(
    target: &Target,
    model: &str,
    dataset: &str,
    split: &str,
    output: Option<&str>,
) -> Result<EvalReport, CtlError> {
    let output = match output {
        Some(o) => o.to_string(),
        None => default_output(model)?,
    };
    let yaml = spec(model, dataset, split, &output)?;
    let id = crate::jobs::submit_text(target, yaml).await?;
    eprintln!("ctctl: evaluating on the cluster as job {id}");
    let status = crate::watch::watch_to_stderr(target, &id).await?;
    if crate::render::job_state(status.state) != Some(JobState::Succeeded) {
        return Err(CtlError::JobDidNotSucceed {
            id,
            state: crate::render::state_name(status.state).into(),
            message: status.message,
        });
    }
    let url = StoreUrl::parse(&status.evaluation)?;
    let bytes = url
        .get_bounded(MAX_REPORT_BYTES, "an evaluation report")
        .await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| CtlError::Usage(format!("{}: not an evaluation report: {e}", url.as_str())))
}

/// Evaluates here, on the CPU.
pub async fn local(model: &str, dataset: &str, split: &str) -> Result<EvalReport, CtlError> {
    Ok(evaluate(model, dataset, split).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_job_spec_names_the_model_and_writes_beside_its_job() {
        let out = default_output("s3://b/runs/job-1/model.safetensors").unwrap();
        assert_eq!(out, "s3://b/runs");
        assert!(default_output("s3://b/").is_err());
        let yaml = spec("s3://b/runs/job-1/", "s3://b/ds", "test", &out).unwrap();
        let s = JobSpec::from_yaml(&yaml).unwrap();
        assert_eq!(s.name, "evaluate-job-1");
        assert_eq!(s.output, "s3://b/runs");
        let ev = s.evaluate.unwrap();
        assert_eq!(
            (ev.model.as_str(), ev.split.as_str()),
            ("s3://b/runs/job-1", "test")
        );
    }
}
