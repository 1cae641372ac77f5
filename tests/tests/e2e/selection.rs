//! Model selection and the model card: a job keeps the epoch that is best by its validation
//! metric (bit for bit that step's weights), stops early when the metric stops improving, tests
//! the kept weights on the test split with the workers (as `ctctl evaluate` does locally), and
//! writes a card whose provenance checks out; weights that do not match their card are refused.

use ctcluster_common::Step;
use ctcluster_common::card::{MODEL_CARD_FILE, ModelCard, load_card, safetensors_bytes};
use ctcluster_common::checkpoint::{Checkpoint, checkpoint_dir_name, sha};
use ctcluster_common::selection::{SelectionMetric, SelectionSpec};
use ctcluster_common::spec::JobSpec;
use ctcluster_common::storage::StoreUrl;
use ctcluster_proto as pb;
use ctcluster_tests::{Cluster, spec, synthetic};
use ctctl::cli::Format;

/// The job's validation metric per finished epoch, from its report.
async fn history(cluster: &Cluster, job: &str, metric: SelectionMetric) -> Vec<f64> {
    let report = cluster
        .client()
        .await
        .get_job_report(pb::GetJobRequest {
            job_id: job.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    report
        .history
        .iter()
        .map(|h| {
            let m = h.metrics.unwrap();
            match metric {
                SelectionMetric::ValAuc => m.val_auc.unwrap(),
                SelectionMetric::ValAccuracy => m.val_accuracy.unwrap(),
                other => panic!("not used here: {other:?}"),
            }
        })
        .collect()
}

fn dir_of(model: &str) -> StoreUrl {
    StoreUrl::parse(model.trim_end_matches("model.safetensors")).unwrap()
}

/// The exported weights are exactly the job's parameters after step `step` (every step is
/// checkpointed in these jobs).
async fn assert_weights_are_step(model: &str, step: Step) {
    let (_, params) = ctcluster_common::card::load_model(model).await.unwrap();
    let ck = dir_of(model)
        .join("checkpoints")
        .unwrap()
        .join(&checkpoint_dir_name(step))
        .unwrap();
    let ck = Checkpoint::load(&ck).await.unwrap();
    assert_eq!(ck.state.step, step);
    assert!(
        params == ck.params,
        "the exported weights are not step {step:?}'s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_best_epoch_is_exported_with_a_card_that_checks_out() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = synthetic("memory://selection/ds", 256, 40, 21).await;
    let cluster = Cluster::start("memory://selection/state", 2).await;
    let out = tmp.path().join("out").display().to_string();
    let common = "batch_size: 64\nseed: 4\ncheckpoint:\n  every_steps: 1\n  keep: 1000\n";

    // 1. By validation AUC with patience 2, over up to 6 epochs.
    let auc = SelectionSpec {
        metric: SelectionMetric::ValAuc,
        patience: Some(2),
        min_delta: 0.0,
    };
    let yaml = spec(
        "select-auc",
        ds.as_str(),
        &out,
        &format!(
            "{common}epochs: 6\noptimizer:\n  lr: 0.01\nselection:\n  metric: val_auc\n  patience: 2\n"
        ),
    );
    let s = cluster.run(&yaml).await;
    assert_eq!(s.state, pb::JobState::Succeeded as i32, "{}", s.message);
    let values = history(&cluster, &s.id, SelectionMetric::ValAuc).await;
    // What the rule says for this history: the first epoch with the highest AUC is kept, and
    // training ends two epochs without an improvement later (or after the sixth).
    let mut best = None;
    let mut stopped = None;
    for (e, &v) in values.iter().enumerate() {
        let j = auc.judge(best.as_ref(), e as u32, 0, v);
        best = Some(j.best);
        if j.stop {
            stopped = Some(e + 1);
            break;
        }
    }
    let best = best.unwrap();
    let card = load_card(&s.model).await.unwrap();
    let sel = card
        .selection
        .clone()
        .expect("the card records the selection");
    assert_eq!(sel.metric, SelectionMetric::ValAuc);
    assert_eq!((sel.epoch, sel.value), (best.epoch, best.value));
    assert_eq!(sel.epochs_trained as usize, values.len());
    assert_eq!(stopped.unwrap_or(6), values.len(), "{values:?}");
    assert_eq!(sel.stopped_early.is_some(), values.len() < 6);
    let spe = s.step / values.len() as u64;
    assert_eq!(card.step, Step(spe * (u64::from(best.epoch) + 1)));
    assert_weights_are_step(&s.model, card.step).await;
    assert_eq!(card.validation.as_ref().unwrap().roc_auc, Some(best.value));

    // 2. Early stopping: no epoch can beat the first by a whole unit of accuracy, so training
    // stops after 1 + patience epochs and the first epoch's weights are exported.
    let yaml = spec(
        "select-early",
        ds.as_str(),
        &out,
        &format!(
            "{common}epochs: 10\nselection:\n  metric: val_accuracy\n  patience: 2\n  min_delta: 1.0\n"
        ),
    );
    let s = cluster.run(&yaml).await;
    assert_eq!(s.state, pb::JobState::Succeeded as i32, "{}", s.message);
    assert!(
        s.message.contains("stopped early after 3 of 10 epochs"),
        "{}",
        s.message
    );
    let values = history(&cluster, &s.id, SelectionMetric::ValAccuracy).await;
    assert_eq!(values.len(), 3);
    let spe = s.step / 3;
    let card = load_card(&s.model).await.unwrap();
    let sel = card.selection.clone().unwrap();
    assert_eq!(
        (sel.epoch, sel.epochs_trained, card.step),
        (0, 3, Step(spe))
    );
    assert_eq!(sel.value, values[0]);
    assert!(
        sel.stopped_early
            .as_deref()
            .unwrap()
            .contains("val_accuracy")
    );
    assert_weights_are_step(&s.model, card.step).await;
    cluster.stop().await;

    // The card's provenance checks out against the files it names.
    let dir = dir_of(&s.model);
    let weights = dir.join("model.safetensors").unwrap().get().await.unwrap();
    assert_eq!(card.weights_sha256, sha(&weights));
    let manifest = ds.join("manifest.json").unwrap().get().await.unwrap();
    assert_eq!(card.dataset.manifest_sha256, sha(&manifest));
    assert_eq!(card.dataset.url, ds.as_str());
    assert_eq!(card.ctcluster_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(card.classes, ["normal", "lesion"]);
    let trained_by = JobSpec::from_yaml(&card.spec_yaml).unwrap();
    assert_eq!(trained_by.name, "select-early");
    assert_eq!(trained_by.selection.unwrap().min_delta, 1.0);
    // Tested on the test split by the workers: the figures `ctctl evaluate --local` gives.
    let test = card.test.clone().expect("the dataset has a test split");
    let local = ctcluster_common::evaluate::evaluate(&s.model, ds.as_str(), "test")
        .await
        .unwrap();
    assert_eq!(test.samples, 40);
    assert_eq!(
        (test.accuracy, test.roc_auc, test.roc_auc_ci95, test.ece),
        (local.accuracy, local.roc_auc, local.roc_auc_ci95, local.ece)
    );
    assert!((test.loss - local.loss).abs() < 1e-6, "{test:?} {local:?}");

    // `ctctl model show`: the card, and the weights checked against it.
    let text = ctctl::model::show(&s.model, Format::Table).await.unwrap();
    for want in [
        "selection  best val_accuracy",
        "stopped early after 3 of 10 epochs",
        "test       split test (40 images)",
        &card.weights_sha256,
        "weights    match the card's sha256",
        "name: select-early",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
    let json = ctctl::model::show(&s.model, Format::Json).await.unwrap();
    let parsed: ModelCard = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed, card);

    // Other weights of the same shape in the card's place: refused by everything that reads
    // the model, naming both hashes.
    let (_, params) = ctcluster_common::card::load_model(&s.model).await.unwrap();
    let other: Vec<f32> = params.iter().map(|v| -v).collect();
    let forged = safetensors_bytes(&card.model, &other, &card.job_id).unwrap();
    let forged_sha = sha(&forged);
    dir.join("model.safetensors")
        .unwrap()
        .put(forged)
        .await
        .unwrap();
    let e = ctctl::predict::predict(&s.model, &[ds.as_str().to_string()], "test")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&forged_sha) && e.contains(&card.weights_sha256),
        "{e}"
    );
    assert!(ctctl::model::show(&s.model, Format::Table).await.is_err());
    let e = ctcluster_common::evaluate::evaluate(&s.model, ds.as_str(), "test")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not the weights"), "{e}");
    assert!(dir.join(MODEL_CARD_FILE).unwrap().get().await.is_ok());
}
