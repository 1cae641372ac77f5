//! `ctctl explain --model URL INPUT... --out DIR`: for each image, where the model looked. Writes
//! `<id>.png` (the windowed image, the heat map over it, a colour bar, the class explained and its
//! probability), `<id>.npy` (the raw map, float32, the model's input size) and
//! `explanations.json` (method, layer, class, probability, the weights' sha256, per image).

mod overlay;

use std::path::Path;

use ctcluster_common::card::load_model_file;
use ctcluster_common::dataset::NpyArray;
use ctcluster_common::model::{Device, Method, explain};
use serde::Serialize;

pub use overlay::{jet, overlay_png};

use crate::CtlError;
use crate::predict::gather;

/// Images explained when `--limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;

/// One image's entry in `explanations.json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Entry {
    /// Stable id (a dataset's sample id, or a hash of a file's pixels).
    pub id: String,
    /// Where the image came from.
    pub input: String,
    /// The class explained (the predicted one unless `--class`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// Its probability.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probability: Option<f32>,
    /// The predicted class.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predicted: Option<String>,
    /// The picture, relative to the output folder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub png: Option<String>,
    /// The raw map, relative to the output folder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub npy: Option<String>,
    /// Why the image has no explanation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `explanations.json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Explanations {
    /// The model as given.
    pub model: String,
    /// sha256 of its `model.safetensors`.
    pub model_sha256: String,
    /// The method's name.
    pub method: String,
    /// The layer the maps read from (`input` for gradient and occlusion methods).
    pub layer: String,
    /// Map size, `[height, width]` (the model's input).
    pub map_shape: [usize; 2],
    /// One entry per image.
    pub images: Vec<Entry>,
}

/// What `ctctl explain` is asked.
#[derive(Clone, Debug)]
pub struct ExplainArgs {
    /// The model URL.
    pub model: String,
    /// Datasets, files or folders.
    pub inputs: Vec<String>,
    /// Where the files go.
    pub out: std::path::PathBuf,
    /// How maps are computed.
    pub method: Method,
    /// The class to explain, by name; the predicted class when absent.
    pub class: Option<String>,
    /// The split of dataset inputs.
    pub split: String,
    /// Most images explained.
    pub limit: usize,
}

/// A file name made of an id: letters, digits, `-`, `_` and `.` kept, the rest `_`.
fn file_stem(id: &str, index: usize) -> String {
    let clean: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.is_empty() || clean.starts_with('.') {
        format!("image-{index:05}")
    } else {
        clean
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), CtlError> {
    std::fs::write(path, bytes).map_err(CtlError::write(path))
}

/// Explains every image of the inputs (up to the limit) and writes the files; returns the
/// parsed `explanations.json`.
pub async fn run(args: &ExplainArgs) -> Result<Explanations, CtlError> {
    let loaded = load_model_file(&args.model).await?;
    let model = loaded.card.model.clone();
    let classes = loaded.card.classes.clone();
    let class = match &args.class {
        None => None,
        Some(name) => Some(classes.iter().position(|c| c == name).ok_or_else(|| {
            CtlError::Usage(format!(
                "--class {name:?} is not one of the model's classes: {}",
                classes.join(", ")
            ))
        })?),
    };
    std::fs::create_dir_all(&args.out).map_err(CtlError::write(&args.out))?;
    let items = gather(&model, &args.inputs, &args.split, args.limit).await?;
    let params = std::sync::Arc::new(loaded.params);
    let layer = if args.method.reads_cam_layer() {
        model.arch().cam_layer().to_string()
    } else {
        "input".to_string()
    };
    let mut entries = Vec::new();
    let mut used = std::collections::BTreeSet::new();
    for (index, item) in items.into_iter().enumerate() {
        let mut entry = Entry {
            id: item.id.clone(),
            input: item.input.clone(),
            class: None,
            probability: None,
            predicted: None,
            png: None,
            npy: None,
            error: None,
        };
        let pixels = match item.pixels {
            Ok(p) => p,
            Err(reason) => {
                entry.error = Some(reason);
                entries.push(entry);
                continue;
            }
        };
        let (m, p, method) = (model.clone(), params.clone(), args.method);
        let px = pixels.clone();
        let explained = tokio::task::spawn_blocking(move || {
            explain(&m, &p, &px, method, class, &Device::flex())
        })
        .await
        .map_err(|e| CtlError::Common(ctcluster_common::Error::Compute(e.to_string())))?;
        let e = match explained {
            Ok(e) => e,
            Err(err) => {
                entry.error = Some(err.to_string());
                entries.push(entry);
                continue;
            }
        };
        // Two images with one id (the same pixels twice) do not overwrite each other.
        let mut stem = file_stem(&item.id, index);
        if !used.insert(stem.clone()) {
            stem = format!("{stem}-{index}");
            used.insert(stem.clone());
        }
        let name = &classes[e.class];
        let prob = e.probs[e.class];
        let title = format!("{name} {prob:.3} ({})", args.method.name());
        let png = overlay_png(
            &pixels,
            model.channels,
            model.height,
            model.width,
            &e.map,
            &title,
        )
        .map_err(|err| CtlError::Encode {
            what: "an explanation",
            reason: err.to_string(),
        })?;
        write(&args.out.join(format!("{stem}.png")), &png)?;
        let npy = NpyArray::f32(&[model.height, model.width], &e.map).to_npy();
        write(&args.out.join(format!("{stem}.npy")), &npy)?;
        entry.class = Some(name.clone());
        entry.probability = Some(prob);
        entry.predicted = classes
            .get(ctcluster_common::model::argmax(&e.probs))
            .cloned();
        entry.png = Some(format!("{stem}.png"));
        entry.npy = Some(format!("{stem}.npy"));
        entries.push(entry);
    }
    let doc = Explanations {
        model: args.model.clone(),
        model_sha256: loaded.sha256,
        method: args.method.name().to_string(),
        layer,
        map_shape: [model.height, model.width],
        images: entries,
    };
    let json = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    write(&args.out.join("explanations.json"), &json)?;
    Ok(doc)
}
