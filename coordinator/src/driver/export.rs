//! The exported model: which weights (the last epoch's, or the best by the job's selection
//! metric), early stopping, and the card written beside them (provenance, validation and test
//! metrics, the weights' sha256).

use ctcluster_common::card::{
    DatasetProvenance, MODEL_CARD_FORMAT, MetricsSummary, ModelCard, Selected, ctcluster_version,
    export_model, load_model_file,
};
use ctcluster_common::checkpoint::TrainingState;
use ctcluster_common::dataset::Manifest;
use ctcluster_common::evaluate::EvalReport;
use ctcluster_common::model::ModelConfig;
use ctcluster_common::spec::JobSpec;
use ctcluster_common::storage::StoreUrl;
use ctcluster_common::{Step, trace_span};
use tracing::Instrument;

use crate::error::CoordError;
use crate::job::JobHandle;
use crate::plan::DataPlan;
use crate::state::Coordinator;

use super::rounds::{EvalAt, evaluate};
use super::run::Stop;
use super::start::Progress;

/// What every card of a job shares.
pub(super) struct Provenance {
    /// The job's id.
    pub job_id: String,
    /// The model's configuration.
    pub model: ModelConfig,
    /// Class names.
    pub classes: Vec<String>,
    /// The dataset.
    pub dataset: DatasetProvenance,
}

impl Provenance {
    /// The provenance of a job's model on the plan's splits.
    pub fn new(
        job: &JobHandle,
        model: &ModelConfig,
        manifest: &Manifest,
        manifest_sha256: &str,
        plan: &DataPlan,
    ) -> Provenance {
        Provenance {
            job_id: job.id.to_string(),
            model: model.clone(),
            classes: manifest.classes.clone(),
            dataset: DatasetProvenance {
                url: job.spec.dataset.clone(),
                manifest_sha256: manifest_sha256.to_string(),
                source: manifest.source.clone(),
                deidentification: manifest.deidentification.clone(),
                train_split: plan.train.split.clone(),
                validation: if plan.val.split == plan.train.split {
                    format!(
                        "{} of split {}, held out by sample id",
                        job.spec.validation.fraction, plan.train.split
                    )
                } else {
                    plan.val.split.clone()
                },
            },
        }
    }

    fn card(&self, spec: &JobSpec, step: Step, epochs: u32) -> ModelCard {
        ModelCard {
            format: MODEL_CARD_FORMAT.into(),
            model: self.model.clone(),
            classes: self.classes.clone(),
            job_id: self.job_id.clone(),
            step,
            epochs,
            ctcluster_version: ctcluster_version(),
            dataset: self.dataset.clone(),
            spec_yaml: spec.to_yaml(),
            selection: None,
            validation: None,
            test: None,
            weights_sha256: String::new(),
        }
    }
}

/// At an epoch's end, with `selection` in the spec: judges the epoch by its validation report
/// and, when it is the best so far, exports its weights at once (so that they survive a
/// restart; the card is completed at the job's end). Updates the state's best.
pub(super) async fn judge_epoch(
    job: &JobHandle,
    prov: &Provenance,
    p: &mut Progress,
    epoch: u32,
    val: &EvalReport,
    job_output: &StoreUrl,
) -> Result<(), Stop> {
    let Some(sel) = &job.spec.selection else {
        return Ok(());
    };
    let value = sel.metric.of(val)?;
    let judgement = sel.judge(p.state.best.as_ref(), epoch, p.state.step.0, value);
    tracing::info!(
        job = %job.id, epoch, metric = sel.metric.as_str(), value,
        improved = judgement.improved, best_epoch = judgement.best.epoch, "model selection"
    );
    if judgement.improved {
        let mut card = prov.card(&job.spec, p.state.step, epoch + 1);
        card.validation = Some(MetricsSummary::from(val));
        let span = trace_span!("export_model", step = p.state.step.0, best = true);
        export_model(job_output, &card, &p.params)
            .instrument(span)
            .await?;
    }
    p.state.best = Some(judgement.best);
    Ok(())
}

/// Why training stops before its last epoch: the selection's patience ran out (judged from
/// the state alone, so a resumed job stops where the original would have).
pub(super) fn stopped_early(spec: &JobSpec, state: &TrainingState) -> Option<String> {
    let sel = spec.selection.as_ref()?;
    let patience = sel.patience?;
    let best = state.best.as_ref()?;
    (best.stale_epochs >= patience).then(|| {
        format!(
            "stopped early after {} of {} epochs: {} did not improve by more than {} for {patience} \
             epochs; the best, {:.4}, was after epoch {}",
            state.epoch,
            spec.epochs,
            sel.metric.as_str(),
            sel.min_delta,
            best.value,
            best.epoch + 1
        )
    })
}

/// What the job's end needs to export its model.
pub(super) struct Finish<'a> {
    /// The coordinator (for evaluation rounds).
    pub coord: &'a Coordinator,
    /// The job.
    pub job: &'a JobHandle,
    /// Its data plan.
    pub plan: &'a DataPlan,
    /// The model configuration as the workers read it.
    pub model_json: &'a str,
    /// Provenance.
    pub prov: &'a Provenance,
    /// Where the job writes.
    pub job_output: &'a StoreUrl,
}

/// Exports the job's model: the best epoch's weights when the job selects by a metric (read
/// back from their export, checked against its sha256), else the final ones; tests them on
/// the dataset's `test` split with the workers; writes the weights and the complete card.
/// Returns the weights' URL and the card.
pub(super) async fn finish(
    f: Finish<'_>,
    p: &Progress,
    last_val: Option<EvalReport>,
    early: Option<String>,
) -> Result<(StoreUrl, ModelCard), Stop> {
    let spec = &f.job.spec;
    let num_params = p.params.len() as u64;
    let selected = spec.selection.as_ref().zip(p.state.best.as_ref());
    let (params, mut card) = match selected {
        Some((sel, best)) => {
            let loaded = load_model_file(f.job_output.as_str()).await?;
            if loaded.card.step.0 != best.step || loaded.params.len() != p.params.len() {
                return Err(Stop::Failed(CoordError::Internal(format!(
                    "the exported best model is of step {}, the job's best is step {}",
                    loaded.card.step.0, best.step
                ))));
            }
            let mut card = f.prov.card(spec, Step(best.step), best.epoch + 1);
            card.validation = loaded.card.validation;
            card.selection = Some(Selected {
                metric: sel.metric,
                value: best.value,
                epoch: best.epoch,
                epochs_trained: p.state.epoch,
                stopped_early: early,
            });
            (loaded.params, card)
        }
        None => {
            let val = match last_val {
                Some(v) => Some(v),
                // The final weights were not validated (a `max_steps` ending mid-epoch).
                None => {
                    let at = EvalAt {
                        epoch: p.state.epoch,
                        version: p.state.step.0,
                        num_params,
                    };
                    let span =
                        trace_span!("evaluate", split = %f.plan.val.split, final_weights = true);
                    evaluate(
                        f.coord,
                        f.job,
                        &f.plan.val,
                        f.model_json,
                        &f.prov.classes,
                        at,
                        &span,
                    )
                    .await?
                }
            };
            let mut card = f.prov.card(spec, p.state.step, p.state.epoch);
            card.validation = val.as_ref().map(MetricsSummary::from);
            (p.params.clone(), card)
        }
    };
    if let Some(test) = &f.plan.test {
        if card.step != p.state.step {
            // The workers fetch the selected weights by their step.
            f.job.publish_params(card.step.0, &params);
        }
        let at = EvalAt {
            epoch: p.state.epoch,
            version: card.step.0,
            num_params,
        };
        let span = trace_span!("evaluate", split = %test.split, step = card.step.0);
        let report = evaluate(
            f.coord,
            f.job,
            test,
            f.model_json,
            &f.prov.classes,
            at,
            &span,
        )
        .instrument(span.clone())
        .await?;
        card.test = report.as_ref().map(MetricsSummary::from);
    }
    let span = trace_span!("export_model", step = card.step.0);
    let (url, card) = export_model(f.job_output, &card, &params)
        .instrument(span)
        .await?;
    Ok((url, card))
}
