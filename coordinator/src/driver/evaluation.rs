//! A job that evaluates an exported model (`evaluate:` in its spec, what `ctctl evaluate`
//! submits): the weights checked against their card, one round of evaluation tasks over the
//! split on the cluster's workers, and the report written to `<output>/<job id>/evaluation.json`.

use ctcluster_common::card::load_model_file;
use ctcluster_common::dataset::{load_manifest, verify_shard_sizes};
use ctcluster_common::evaluate::check_fits;
use ctcluster_common::spec::EvaluateSpec;
use ctcluster_common::storage::StoreUrl;
use ctcluster_common::{Error, trace_span};
use tracing::Instrument;

use crate::job::JobHandle;
use crate::plan::SplitRefs;
use crate::state::Coordinator;

use super::pace::wait_for_workers;
use super::rounds::{EvalAt, evaluate};
use super::run::Stop;

/// The report's file name under the job's output.
pub const EVALUATION_FILE: &str = "evaluation.json";

/// Evaluates the spec's model on its split; records the report's URL and a one-line summary.
pub(super) async fn run(
    coord: &Coordinator,
    job: &JobHandle,
    ev: &EvaluateSpec,
) -> Result<(), Stop> {
    let dataset = StoreUrl::parse(&job.spec.dataset)?;
    let manifest = load_manifest(&dataset).await?;
    manifest.split(&ev.split, dataset.as_str())?;
    verify_shard_sizes(&dataset, &manifest, &ev.split).await?;
    let model = load_model_file(&ev.model)
        .await
        .map_err(|e| e.in_field("evaluate.model"))?;
    check_fits(&manifest, &model.card, dataset.as_str())?;
    let split = SplitRefs::whole(&manifest, &ev.split);
    if split.samples.is_empty() {
        return Err(
            Error::dataset(dataset.as_str(), format!("split {} is empty", ev.split)).into(),
        );
    }
    let model_json =
        serde_json::to_string(&model.card.model).map_err(|e| Error::Compute(e.to_string()))?;
    job.update(|r| {
        r.total_steps = 1;
        r.classes = model.card.classes.clone();
    });
    job.publish_params(0, &model.params);
    wait_for_workers(coord, job).await?;
    let at = EvalAt {
        epoch: 0,
        version: 0,
        num_params: model.params.len() as u64,
    };
    let span = trace_span!(
        "evaluate",
        job.id = %job.id,
        split = %ev.split,
        samples = split.samples.len(),
        model_sha256 = %model.sha256,
    );
    let report = evaluate(
        coord,
        job,
        &split,
        &model_json,
        &model.card.classes,
        at,
        &span,
    )
    .instrument(span.clone())
    .await?
    .ok_or_else(|| Error::dataset(dataset.as_str(), format!("split {} is empty", ev.split)))?;
    let url = StoreUrl::parse(&job.spec.output)?
        .join(job.id.as_str())?
        .join(EVALUATION_FILE)?;
    let json = serde_json::to_vec_pretty(&report).map_err(|e| Error::Compute(e.to_string()))?;
    url.put(json).await?;
    let auc = report
        .roc_auc
        .map_or_else(|| "n/a".to_string(), |a| format!("{a:.4}"));
    job.update(|r| {
        r.step = 1;
        r.evaluation = Some(url.to_string());
        r.message = format!(
            "evaluated {} images of split {}: accuracy {:.4}, ROC-AUC {auc}",
            report.samples, report.split, report.accuracy
        );
    });
    tracing::info!(job = %job.id, report = %url, samples = report.samples, "evaluation done");
    Ok(())
}
