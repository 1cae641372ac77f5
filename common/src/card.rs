//! The exported model and its card: `model.safetensors` (PyTorch names and layouts) and, beside
//! it, `model.json`, which says what the model is and where it came from: architecture and
//! preprocessing, classes, the dataset (its manifest's sha256 and de-identification key
//! fingerprint), the job spec, the ctcluster version, validation and test metrics, and the
//! weights' own sha256. Whatever reads a model checks the weights against that sha256 first.

use serde::{Deserialize, Serialize};

use crate::checkpoint::{MAX_CHECKPOINT_META_BYTES, MAX_CHECKPOINT_PARAMS, sha};
use crate::dataset::Deidentification;
use crate::evaluate::EvalReport;
use crate::model::ModelConfig;
use crate::selection::SelectionMetric;
use crate::storage::StoreUrl;
use crate::tensor_bytes::f32_to_le_bytes;
use crate::{Error, Result, Step};

/// Format tag of model cards.
pub const MODEL_CARD_FORMAT: &str = "ctcluster.model-card.v1";
/// The card's file name, beside the weights.
pub const MODEL_CARD_FILE: &str = "model.json";
/// The weights' file name.
pub const MODEL_FILE: &str = "model.safetensors";

/// What `model.json` holds beside the exported weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCard {
    /// [`MODEL_CARD_FORMAT`].
    pub format: String,
    /// Architecture and input pipeline (window, size, normalisation).
    pub model: ModelConfig,
    /// Class names, indexed like the model's outputs.
    pub classes: Vec<String>,
    /// The job that trained it.
    pub job_id: String,
    /// Optimizer steps behind these weights.
    pub step: Step,
    /// Epochs completed behind these weights.
    pub epochs: u32,
    /// The ctcluster release that trained it.
    pub ctcluster_version: String,
    /// The data it was trained on.
    pub dataset: DatasetProvenance,
    /// The job spec, as YAML.
    pub spec_yaml: String,
    /// Set when the job selected its model by a validation metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection: Option<Selected>,
    /// The weights on the validation split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<MetricsSummary>,
    /// The weights on the dataset's `test` split, where it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<MetricsSummary>,
    /// sha256 of `model.safetensors`, lowercase hex.
    pub weights_sha256: String,
}

/// Where the training data came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetProvenance {
    /// The dataset's URL, as the job spec gave it.
    pub url: String,
    /// sha256 of its `manifest.json` (which names every shard by its sha256).
    pub manifest_sha256: String,
    /// The kind of source it was ingested from.
    pub source: String,
    /// How its images were de-identified, when they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deidentification: Option<Deidentification>,
    /// The split trained on.
    pub train_split: String,
    /// The validation split (a split's name, or the hold-out carved from the training split).
    pub validation: String,
}

/// Which epoch the selection kept, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selected {
    /// The metric judged.
    pub metric: SelectionMetric,
    /// Its value for the kept weights.
    pub value: f64,
    /// The 0-based epoch kept.
    pub epoch: u32,
    /// Epochs trained in all.
    pub epochs_trained: u32,
    /// Set when training stopped early, with why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_early: Option<String>,
}

/// The headline metrics of one split (the full report is `ctctl evaluate`'s).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSummary {
    /// The split.
    pub split: String,
    /// Images.
    pub samples: u64,
    /// Fraction predicted right.
    pub accuracy: f64,
    /// Mean cross-entropy.
    pub loss: f64,
    /// ROC-AUC (class 1 for two classes; the one-vs-rest mean for more).
    pub roc_auc: Option<f64>,
    /// Its 95% bootstrap interval.
    pub roc_auc_ci95: Option<[f64; 2]>,
    /// Mean recall over the classes present.
    pub balanced_accuracy: Option<f64>,
    /// Two classes: recall of class 1.
    pub sensitivity: Option<f64>,
    /// Two classes: recall of class 0.
    pub specificity: Option<f64>,
    /// Expected calibration error.
    pub ece: Option<f64>,
}

impl From<&EvalReport> for MetricsSummary {
    fn from(r: &EvalReport) -> Self {
        MetricsSummary {
            split: r.split.clone(),
            samples: r.samples,
            accuracy: r.accuracy,
            loss: r.loss,
            roc_auc: r.roc_auc,
            roc_auc_ci95: r.roc_auc_ci95,
            balanced_accuracy: r.balanced_accuracy,
            sensitivity: r.sensitivity,
            specificity: r.specificity,
            ece: r.ece,
        }
    }
}

/// This build's version, as cards record it.
pub fn ctcluster_version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// The weights as safetensors bytes, with PyTorch names and shapes.
pub fn safetensors_bytes(model: &ModelConfig, params: &[f32], job_id: &str) -> Result<Vec<u8>> {
    let layout = model.layout();
    let expected: usize = layout.iter().map(|p| p.len()).sum();
    if params.len() != expected {
        return Err(Error::invalid(
            "params",
            format!(
                "{} values for a model of {expected} parameters",
                params.len()
            ),
        ));
    }
    let mut offset = 0;
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = layout
        .iter()
        .map(|p| {
            let slice = &params[offset..offset + p.len()];
            offset += p.len();
            (p.name.clone(), f32_to_le_bytes(slice), p.shape.clone())
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, data, shape)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                .map(|v| (name.clone(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Compute(format!("safetensors: {e}")))?;
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert("ctcluster.job".to_string(), job_id.to_string());
    safetensors::serialize(views, Some(meta))
        .map_err(|e| Error::Compute(format!("safetensors: {e}")))
}

/// Writes the weights, then the card with their sha256 filled in (a card is only ever beside
/// the weights it describes); returns the weights' URL and the card as written.
pub async fn export_model(
    job_output: &StoreUrl,
    card: &ModelCard,
    params: &[f32],
) -> Result<(StoreUrl, ModelCard)> {
    let bytes = safetensors_bytes(&card.model, params, &card.job_id)?;
    let card = ModelCard {
        weights_sha256: sha(&bytes),
        ..card.clone()
    };
    let url = job_output.join(MODEL_FILE)?;
    url.put(bytes).await?;
    write_card(job_output, &card).await?;
    Ok((url, card))
}

/// (Re)writes the card beside weights already exported.
pub async fn write_card(job_output: &StoreUrl, card: &ModelCard) -> Result<()> {
    let json = serde_json::to_vec_pretty(card).map_err(|e| Error::Compute(e.to_string()))?;
    job_output.join(MODEL_CARD_FILE)?.put(json).await
}

/// A model read by [`load_model_file`].
#[derive(Clone, Debug)]
pub struct LoadedModel {
    /// Its card.
    pub card: ModelCard,
    /// The weights, in the flat layout.
    pub params: Vec<f32>,
    /// sha256 of `model.safetensors`, lowercase hex (the card's, checked).
    pub sha256: String,
}

/// The folder of a model given as its folder, its weights or its card.
pub fn model_dir(url: &str) -> Result<StoreUrl> {
    let base = url
        .trim_end_matches('/')
        .trim_end_matches(MODEL_FILE)
        .trim_end_matches(MODEL_CARD_FILE);
    StoreUrl::parse(base)
}

/// Reads and checks a model's card alone.
pub async fn load_card(url: &str) -> Result<ModelCard> {
    let dir = model_dir(url)?;
    let at = dir.join(MODEL_CARD_FILE)?;
    let bytes = at
        .get_bounded(MAX_CHECKPOINT_META_BYTES, "a model card")
        .await?;
    parse_card(&bytes, at.as_str())
}

/// Parses a card, refusing one of another format (naming it) and one whose model is invalid.
pub fn parse_card(bytes: &[u8], location: &str) -> Result<ModelCard> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::invalid(MODEL_CARD_FILE, format!("{location}: not JSON: {e}")))?;
    match value.get("format").and_then(|f| f.as_str()) {
        Some(MODEL_CARD_FORMAT) => {}
        Some(other) => {
            return Err(Error::invalid(
                MODEL_CARD_FILE,
                format!("{location}: format {other:?}; this ctcluster reads {MODEL_CARD_FORMAT}"),
            ));
        }
        None => {
            return Err(Error::invalid(
                MODEL_CARD_FILE,
                format!(
                    "{location}: a card without a format tag, written by an earlier ctcluster: it \
                     records no weights sha256 to check the weights against; train or export the \
                     model again"
                ),
            ));
        }
    }
    let card: ModelCard = serde_json::from_value(value)
        .map_err(|e| Error::invalid(MODEL_CARD_FILE, format!("{location}: {e}")))?;
    card.model.validate()?;
    if card.classes.len() != card.model.classes {
        return Err(Error::invalid(
            MODEL_CARD_FILE,
            format!(
                "{location}: {} class names for a model of {} outputs",
                card.classes.len(),
                card.model.classes
            ),
        ));
    }
    Ok(card)
}

/// Reads a model exported by [`export_model`] from its folder (or the URL of either file).
pub async fn load_model(url: &str) -> Result<(ModelCard, Vec<f32>)> {
    let m = load_model_file(url).await?;
    Ok((m.card, m.params))
}

/// [`load_model`], with the sha256 of the weights file. Weights whose sha256 is not the one
/// their card records are refused: they are not the model the card describes.
pub async fn load_model_file(url: &str) -> Result<LoadedModel> {
    let dir = model_dir(url)?;
    let card = load_card(dir.as_str()).await?;
    let n = card.model.num_params();
    if n > MAX_CHECKPOINT_PARAMS {
        return Err(Error::invalid(
            MODEL_CARD_FILE,
            format!("{n} parameters, more than the {MAX_CHECKPOINT_PARAMS} allowed"),
        ));
    }
    // The weights plus safetensors' JSON header (names, shapes, offsets, metadata).
    let limit = 4 * n as u64 + (1 << 20);
    let weights = dir.join(MODEL_FILE)?;
    let bytes = weights
        .get_bounded(limit, "the weights of this model card's model")
        .await?;
    let sha256 = sha(&bytes);
    if sha256 != card.weights_sha256 {
        return Err(Error::invalid(
            MODEL_FILE,
            format!(
                "{}: sha256 {sha256} is not the {} its card records: these are not the weights \
                 the card describes (replaced or changed after export)",
                weights.as_str(),
                card.weights_sha256
            ),
        ));
    }
    let params = read_weights(&card.model, &bytes)?;
    Ok(LoadedModel {
        card,
        params,
        sha256,
    })
}

/// The flat parameters from safetensors bytes, every tensor checked against the layout.
fn read_weights(model: &ModelConfig, bytes: &[u8]) -> Result<Vec<f32>> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| Error::invalid(MODEL_FILE, e.to_string()))?;
    let mut params = Vec::with_capacity(model.num_params());
    for p in model.layout() {
        let t = st
            .tensor(&p.name)
            .map_err(|e| Error::invalid(MODEL_FILE, format!("{}: {e}", p.name)))?;
        if t.shape() != p.shape.as_slice() || t.dtype() != safetensors::Dtype::F32 {
            return Err(Error::invalid(
                MODEL_FILE,
                format!(
                    "{} has shape {:?}, expected {:?} f32",
                    p.name,
                    t.shape(),
                    p.shape
                ),
            ));
        }
        crate::tensor_bytes::extend_f32_from_le_bytes(&mut params, t.data(), &p.name)?;
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{ImageInfo, PixelType};

    fn card() -> (ModelCard, Vec<f32>) {
        let image = ImageInfo {
            height: 12,
            width: 12,
            channels: 1,
            pixel_type: PixelType::U8,
        };
        let model = ModelConfig::seed_cnn(&image, 2, 0.5, 0.0, 1.0).unwrap();
        let params = model.init_params(1);
        let card = ModelCard {
            format: MODEL_CARD_FORMAT.into(),
            model,
            classes: vec!["a".into(), "b".into()],
            job_id: "job-1".into(),
            step: Step(7),
            epochs: 1,
            ctcluster_version: ctcluster_version(),
            dataset: DatasetProvenance {
                url: "memory://d/x".into(),
                manifest_sha256: "ab".repeat(32),
                source: "ctctl ingest dicom".into(),
                deidentification: Some(Deidentification {
                    profile: "basic".into(),
                    key_fingerprint: "0123456789abcdef".into(),
                }),
                train_split: "train".into(),
                validation: "val".into(),
            },
            spec_yaml: "name: t\n".into(),
            selection: None,
            validation: None,
            test: None,
            weights_sha256: String::new(),
        };
        (card, params)
    }

    #[tokio::test]
    async fn exported_model_reads_back_with_pytorch_names_and_its_card() {
        let out = StoreUrl::parse("memory://card-test/export").unwrap();
        let (card, params) = card();
        let (url, written) = export_model(&out, &card, &params).await.unwrap();
        let bytes = url.get().await.unwrap();
        assert_eq!(written.weights_sha256, sha(&bytes));
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut names = st.names();
        names.sort();
        assert_eq!(
            names,
            [
                "conv1.bias",
                "conv1.weight",
                "conv2.bias",
                "conv2.weight",
                "fc1.bias",
                "fc1.weight",
                "fc2.bias",
                "fc2.weight"
            ]
        );
        assert_eq!(st.tensor("fc1.weight").unwrap().shape(), [64, 64]);
        // By folder, weights or card URL alike.
        for at in [
            out.as_str().to_string(),
            url.as_str().to_string(),
            out.join(MODEL_CARD_FILE).unwrap().as_str().to_string(),
        ] {
            let m = load_model_file(&at).await.unwrap();
            assert_eq!(m.card, written);
            assert_eq!(m.params, params);
        }
    }

    #[tokio::test]
    async fn weights_that_do_not_match_their_card_are_refused() {
        let out = StoreUrl::parse("memory://card-test/mismatch").unwrap();
        let (card, params) = card();
        let (url, written) = export_model(&out, &card, &params).await.unwrap();
        // Other weights of the same shape put in their place: refused, naming both hashes.
        let other: Vec<f32> = params.iter().map(|v| v * 0.5).collect();
        let forged = safetensors_bytes(&card.model, &other, "job-1").unwrap();
        let forged_sha = sha(&forged);
        url.put(forged).await.unwrap();
        let e = load_model_file(out.as_str()).await.unwrap_err().to_string();
        assert!(
            e.contains(&forged_sha) && e.contains(&written.weights_sha256),
            "{e}"
        );
        // A card without a format (an earlier version's) or of another format: named.
        let mut old = serde_json::to_value(&written).unwrap();
        old.as_object_mut().unwrap().remove("format");
        out.join(MODEL_CARD_FILE)
            .unwrap()
            .put(serde_json::to_vec(&old).unwrap())
            .await
            .unwrap();
        let e = load_card(out.as_str()).await.unwrap_err().to_string();
        assert!(e.contains("earlier ctcluster"), "{e}");
        old["format"] = "ctcluster.model-card.v9".into();
        let e = parse_card(&serde_json::to_vec(&old).unwrap(), "here")
            .unwrap_err()
            .to_string();
        assert!(e.contains("v9") && e.contains(MODEL_CARD_FORMAT), "{e}");
        // Class names that do not fit the model.
        let mut bad = written.clone();
        bad.classes.push("c".into());
        let e = parse_card(&serde_json::to_vec(&bad).unwrap(), "here")
            .unwrap_err()
            .to_string();
        assert!(e.contains("3 class names"), "{e}");
    }
}
