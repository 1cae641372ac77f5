//! Evaluating an exported model on a dataset split, locally: accuracy, loss, ROC-AUC (of class
//! 1 for two classes, the one-vs-rest macro average for more) with a bootstrap interval, the
//! confusion matrix, and the clinical metrics of [`metrics`].

pub mod metrics;

use serde::{Deserialize, Serialize};

use crate::card::{ModelCard, load_model};
use crate::dataset::{Manifest, load_manifest, load_shard};
use crate::model::{BatchBuilder, argmax, eval_batch};
use crate::storage::StoreUrl;
use crate::{Error, Result};

/// What `ctctl evaluate` reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// The split evaluated.
    pub split: String,
    /// Images evaluated.
    pub samples: u64,
    /// Fraction predicted right.
    pub accuracy: f64,
    /// Mean cross-entropy.
    pub loss: f64,
    /// Area under the ROC curve of the positive class (class 1) for two-class models; the
    /// mean of each class's one-vs-rest AUC for more classes.
    pub roc_auc: Option<f64>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<u64>>,
    /// Class names.
    pub classes: Vec<String>,
    /// Mean recall over the classes present.
    #[serde(default)]
    pub balanced_accuracy: Option<f64>,
    /// Precision, recall and F1 of each class.
    #[serde(default)]
    pub per_class: Vec<metrics::ClassMetrics>,
    /// Two-class models: the recall of class 1 (the positive class).
    #[serde(default)]
    pub sensitivity: Option<f64>,
    /// Two-class models: the recall of class 0.
    #[serde(default)]
    pub specificity: Option<f64>,
    /// 95% bootstrap interval of `roc_auc`.
    #[serde(default)]
    pub roc_auc_ci95: Option<[f64; 2]>,
    /// Expected calibration error of the top probability (15 bins).
    #[serde(default)]
    pub ece: Option<f64>,
    /// Reliability diagram: per confidence bin, (mean confidence, accuracy, images).
    #[serde(default)]
    pub reliability: Vec<(f64, f64, usize)>,
    /// Two-class models: the ROC curve of class 1, (false-positive rate, true-positive rate).
    #[serde(default)]
    pub roc_curve: Option<Vec<(f64, f64)>>,
    /// Why a metric is missing (a class absent from the split, or never predicted).
    #[serde(default)]
    pub notes: Vec<String>,
}

/// ROC-AUC from scores of the positive class (ties count half).
pub fn roc_auc(scores: &[f32], positive: &[bool]) -> Option<f64> {
    let pos = positive.iter().filter(|&&p| p).count() as f64;
    let neg = positive.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return None;
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Mann-Whitney U with average ranks for ties.
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            if positive[k] {
                rank_sum_pos += avg_rank;
            }
        }
        i = j + 1;
    }
    Some((rank_sum_pos - pos * (pos + 1.0) / 2.0) / (pos * neg))
}

/// Images per forward pass.
const EVAL_BATCH: usize = 256;

/// ROC-AUC of class 1 for two classes, else the mean one-vs-rest AUC over the classes present
/// (`probs` row-major, one row per label).
pub fn auc_of(probs: &[f32], labels: &[u32], classes: usize) -> Option<f64> {
    let per_class = |c: usize| {
        let scores: Vec<f32> = probs.iter().skip(c).step_by(classes).copied().collect();
        let positive: Vec<bool> = labels.iter().map(|&l| l as usize == c).collect();
        roc_auc(&scores, &positive)
    };
    if classes == 2 {
        return per_class(1);
    }
    let aucs: Vec<f64> = (0..classes).filter_map(per_class).collect();
    (!aucs.is_empty()).then(|| aucs.iter().sum::<f64>() / aucs.len() as f64)
}

/// Checks that a dataset's images and classes are the model's: the channels it takes and as
/// many classes as it has outputs.
pub fn check_fits(manifest: &Manifest, card: &ModelCard, dataset_url: &str) -> Result<()> {
    let m = &card.model;
    if manifest.image.channels as usize != m.channels || manifest.classes.len() != m.classes {
        return Err(Error::invalid(
            "dataset",
            format!(
                "{dataset_url} has {}-channel images in {} classes; the model takes {} channels in {}",
                manifest.image.channels,
                manifest.classes.len(),
                m.channels,
                m.classes
            ),
        ));
    }
    Ok(())
}

/// Evaluates the model at `model_url` on `split` of the dataset at `dataset_url`.
pub async fn evaluate(model_url: &str, dataset_url: &str, split: &str) -> Result<EvalReport> {
    let split = split.to_string();
    let (card, params) = load_model(model_url).await?;
    let dataset = StoreUrl::parse(dataset_url)?;
    let manifest = load_manifest(&dataset).await?;
    let info = manifest.split(&split, dataset.as_str())?;
    check_fits(&manifest, &card, dataset_url)?;
    let m = &card.model;
    let classes = m.classes;
    let mut loss = 0.0;
    let mut scores = Vec::new();
    let mut all_labels = Vec::new();
    for shard in 0..info.shards.len() {
        let data = load_shard(&dataset, &manifest, &split, shard).await?;
        let model = card.model.clone();
        let p = params.clone();
        let src = manifest.image;
        // Batches of EVAL_BATCH images bound the memory a large shard of large images needs.
        let outputs = tokio::task::spawn_blocking(move || {
            (0..data.labels.len())
                .step_by(EVAL_BATCH)
                .map(|start| {
                    let end = (start + EVAL_BATCH).min(data.labels.len());
                    let mut batch = BatchBuilder::new(&model, &src, end - start);
                    for row in start..end {
                        batch.push(&data, row, None)?;
                    }
                    let batch = batch.finish();
                    eval_batch(&model, &p, &batch, &burn::tensor::Device::flex())
                        .map(|o| (o, batch.labels))
                })
                .collect::<Result<Vec<_>>>()
        })
        .await
        .map_err(|e| Error::Compute(format!("evaluation panicked: {e}")))??;
        for (out, labels) in outputs {
            loss += out.loss_sum;
            scores.extend_from_slice(&out.probs);
            all_labels.extend_from_slice(&labels);
        }
    }
    if all_labels.is_empty() {
        return Err(Error::dataset(
            dataset.as_str(),
            format!("split {split} is empty"),
        ));
    }
    debug_assert_eq!(scores.len(), all_labels.len() * classes);
    let classes = card.classes;
    tokio::task::spawn_blocking(move || Ok(report(split, classes, loss, &scores, &all_labels)))
        .await
        .map_err(|e| Error::Compute(format!("evaluation panicked: {e}")))?
}

/// The report of a split from the model's outputs on it: `loss_sum` summed over the images,
/// `probs` row-major (one row of `classes.len()` probabilities per label). Wherever the outputs
/// were computed (here, or by the cluster's workers), the metrics are the same function of
/// them. `labels` must not be empty and every label must index `classes`.
pub fn report(
    split: String,
    classes: Vec<String>,
    loss_sum: f64,
    probs: &[f32],
    labels: &[u32],
) -> EvalReport {
    let k = classes.len();
    let n = labels.len();
    let mut confusion = vec![vec![0u64; k]; k];
    for (row, &label) in probs.chunks_exact(k).zip(labels) {
        confusion[label as usize][argmax(row)] += 1;
    }
    let correct: u64 = (0..k).map(|c| confusion[c][c]).sum();
    let mut notes = Vec::new();
    let per_class = metrics::per_class(&confusion, &classes, &mut notes);
    let roc_auc = auc_of(probs, labels, k);
    if roc_auc.is_none() {
        notes.push(format!(
            "split {split} holds images of one class only: ROC-AUC and its interval are undefined"
        ));
    }
    let binary = k == 2;
    EvalReport {
        samples: n as u64,
        accuracy: correct as f64 / n.max(1) as f64,
        loss: loss_sum / n.max(1) as f64,
        roc_auc,
        balanced_accuracy: metrics::balanced_accuracy(&per_class),
        sensitivity: if binary { per_class[1].recall } else { None },
        specificity: if binary { per_class[0].recall } else { None },
        roc_auc_ci95: metrics::auc_interval(probs, labels, k),
        ece: metrics::expected_calibration_error(probs, labels, k),
        reliability: metrics::reliability(probs, labels, k),
        roc_curve: metrics::roc_curve(probs, labels, k),
        per_class,
        notes,
        confusion,
        classes,
        split,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_reference_values() {
        assert_eq!(
            roc_auc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]),
            Some(0.75)
        );
        assert_eq!(roc_auc(&[0.5, 0.5], &[false, true]), Some(0.5));
        assert_eq!(roc_auc(&[0.9, 0.1], &[true, false]), Some(1.0));
        assert_eq!(roc_auc(&[0.9], &[true]), None);
    }
}
