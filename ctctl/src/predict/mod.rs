//! `ctctl predict --model URL INPUT...`: the model's class probabilities for datasets, image
//! files and DICOM folders. Raw files go through ingest's decoders; the preprocessing (window,
//! resize, normalisation) is the model's own, never retyped. One row per image; a file that
//! cannot be read gets a row with the reason and the run goes on.

mod inputs;
mod output;

use ctcluster_common::card::load_model;
use ctcluster_common::dataset::{ImageInfo, load_manifest, load_shard};
use ctcluster_common::model::{BatchBuilder, Device, ModelConfig, argmax, eval_batch};
use serde::Serialize;

pub use inputs::{Input, frame_name, image_id, kind_of, read_images, resolve};
pub use output::{Output, render};

use crate::CtlError;
use crate::ingest::Decoded;

/// Images per forward pass (and per read-ahead of files).
pub const BATCH: usize = 256;

/// One image's prediction, or why there is none.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Prediction {
    /// Stable id: the dataset's sample id (pseudonymised at ingest), or `img-` and a hash of
    /// the pixels for a file. Never a patient identifier.
    pub id: String,
    /// Where it came from: the path given (or found in a folder), or `DATASET#split`.
    pub input: String,
    /// The true class, where the input is a labelled dataset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The most probable class.
    pub predicted: Option<String>,
    /// Every class's probability, in the model's class order.
    pub probabilities: Vec<f32>,
    /// Why the image has no prediction.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Prediction {
    fn failed(id: String, input: String, error: String) -> Self {
        Prediction {
            id,
            input,
            label: None,
            predicted: None,
            probabilities: Vec::new(),
            error: Some(error),
        }
    }
}

/// The whole run: the model's classes and one prediction per image.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Predictions {
    /// The model's class names, in output order.
    pub classes: Vec<String>,
    /// One row per image, inputs in the order given.
    pub predictions: Vec<Prediction>,
}

/// A raw image prepared for the model: the model's input pixels (channels x height x width,
/// before normalisation), from ingest's decoded values.
pub fn prepare(model: &ModelConfig, img: &Decoded) -> Vec<f32> {
    let mut img = img.clone();
    img.to_channels(model.channels as u32);
    let info = ImageInfo {
        height: img.height,
        width: img.width,
        channels: img.channels,
        pixel_type: img.pixel_type,
    };
    let mut out = Vec::with_capacity(model.channels * model.height * model.width);
    model.input.apply(
        &img.values,
        &info,
        model.height,
        model.width,
        None,
        &mut out,
    );
    out
}

/// Class probabilities of prepared images (`model.channels x height x width` each), on the
/// CPU, off the async threads.
pub async fn probabilities(
    model: &ModelConfig,
    params: &std::sync::Arc<Vec<f32>>,
    pixels: Vec<f32>,
    images: usize,
) -> Result<Vec<f32>, CtlError> {
    let (model, params) = (model.clone(), params.clone());
    tokio::task::spawn_blocking(move || {
        let batch = ctcluster_common::model::BatchInput {
            pixels,
            labels: vec![0; images],
            keep_mask: None,
        };
        eval_batch(&model, &params, &batch, &Device::flex()).map(|o| o.probs)
    })
    .await
    .map_err(|e| CtlError::Common(ctcluster_common::Error::Compute(e.to_string())))?
    .map_err(CtlError::from)
}

fn row(classes: &[String], id: String, input: String, probs: &[f32]) -> Prediction {
    Prediction {
        id,
        input,
        label: None,
        predicted: classes.get(argmax(probs)).cloned(),
        probabilities: probs.to_vec(),
        error: None,
    }
}

/// Predicts every image of `inputs` with the model at `model_url`.
pub async fn predict(
    model_url: &str,
    inputs: &[String],
    split: &str,
) -> Result<Predictions, CtlError> {
    let (card, params) = load_model(model_url).await?;
    let params = std::sync::Arc::new(params);
    let model = card.model.clone();
    let classes = card.classes.clone();
    let mut rows = Vec::new();
    for given in inputs {
        let (input, skipped) = resolve(given);
        if skipped > 0 {
            eprintln!("{given}: {skipped} files that are not images skipped");
        }
        match input {
            Input::Missing(reason) => {
                rows.push(Prediction::failed(String::new(), given.clone(), reason))
            }
            Input::Dataset(url) => {
                let found = predict_dataset(&model, &params, &classes, &url, split).await;
                match found {
                    Ok(found) => rows.extend(found),
                    Err(e) => rows.push(Prediction::failed(
                        String::new(),
                        given.clone(),
                        e.to_string(),
                    )),
                }
            }
            Input::Files(files) => {
                let named: Vec<_> = files
                    .iter()
                    .enumerate()
                    .map(|(i, f)| (f.clone(), display_name(given, f, i, files.len())))
                    .collect();
                for chunk in named.chunks(BATCH) {
                    rows.extend(predict_files(&model, &params, &classes, chunk).await?);
                }
            }
        }
    }
    Ok(Predictions {
        classes,
        predictions: rows,
    })
}

/// How a file is named in the output: its path, except for a DICOM file found in a folder,
/// whose name archives often make of the patient's: the folder as given and its position in
/// name order (`scans/#3`).
fn display_name(given: &str, file: &std::path::Path, index: usize, files: usize) -> String {
    let found_in_folder = files > 1 || std::path::Path::new(given).is_dir();
    if found_in_folder && kind_of(file) == Some("dicom") {
        format!("{given}#{}", index + 1)
    } else {
        file.display().to_string()
    }
}

async fn predict_files(
    model: &ModelConfig,
    params: &std::sync::Arc<Vec<f32>>,
    classes: &[String],
    files: &[(std::path::PathBuf, String)],
) -> Result<Vec<Prediction>, CtlError> {
    let m = model.clone();
    let list = files.to_vec();
    // Reading and decoding are blocking work too. A multi-frame DICOM object gives a row per
    // frame.
    let read = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for (path, name) in &list {
            read_images(path, |frame, img| {
                let prepared = img.map(|img| (image_id(&img), prepare(&m, &img)));
                out.push((frame_name(name, frame), prepared));
            });
        }
        out
    })
    .await
    .map_err(|e| CtlError::Common(ctcluster_common::Error::Compute(e.to_string())))?;
    // Forward passes of at most BATCH images (a volume's frames can be many).
    let good: Vec<&Vec<f32>> = read
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok().map(|(_, p)| p))
        .collect();
    let mut probs = Vec::with_capacity(good.len() * model.classes);
    for batch in good.chunks(BATCH) {
        let pixels: Vec<f32> = batch.iter().flat_map(|p| p.iter().copied()).collect();
        probs.extend(probabilities(model, params, pixels, batch.len()).await?);
    }
    let k = model.classes;
    let mut next = 0;
    Ok(read
        .into_iter()
        .map(|(input, r)| match r {
            Ok((id, _)) => {
                let p = &probs[next * k..(next + 1) * k];
                next += 1;
                row(classes, id, input, p)
            }
            Err(reason) => Prediction::failed(String::new(), input, reason),
        })
        .collect())
}

/// One image an INPUT named, prepared for the model, or why it could not be.
#[derive(Clone, Debug)]
pub struct Item {
    /// Stable id (as in [`Prediction::id`]).
    pub id: String,
    /// Where it came from (as in [`Prediction::input`]).
    pub input: String,
    /// The model's input pixels (before normalisation), or the reason there are none.
    pub pixels: Result<Vec<f32>, String>,
}

/// The first `limit` images of `inputs`, prepared for `model` (for `ctctl explain`).
pub async fn gather(
    model: &ModelConfig,
    inputs: &[String],
    split: &str,
    limit: usize,
) -> Result<Vec<Item>, CtlError> {
    let mut items = Vec::new();
    for given in inputs {
        if items.len() >= limit {
            break;
        }
        let (input, _) = resolve(given);
        match input {
            Input::Missing(reason) => items.push(Item {
                id: String::new(),
                input: given.clone(),
                pixels: Err(reason),
            }),
            Input::Dataset(url) => {
                let manifest = load_manifest(&url).await?;
                let info = manifest.split(split, url.as_str())?;
                for shard in 0..info.shards.len() {
                    let data = load_shard(&url, &manifest, split, shard).await?;
                    for r in 0..data.labels.len() {
                        if items.len() >= limit {
                            break;
                        }
                        let mut batch = BatchBuilder::new(model, &manifest.image, 1);
                        batch.push(&data, r, None)?;
                        items.push(Item {
                            id: data.ids[r].clone(),
                            input: format!("{url}#{split}"),
                            pixels: Ok(batch.finish().pixels),
                        });
                    }
                }
            }
            Input::Files(files) => {
                let take = files.len().min(limit - items.len());
                let names: Vec<String> = files[..take]
                    .iter()
                    .enumerate()
                    .map(|(i, f)| display_name(given, f, i, files.len()))
                    .collect();
                let (m, list) = (model.clone(), files[..take].to_vec());
                let room = limit - items.len();
                // Reading, decoding and resampling are blocking work; a multi-frame DICOM
                // object gives an image per frame.
                let read = tokio::task::spawn_blocking(move || {
                    let mut out = Vec::new();
                    for (f, name) in list.iter().zip(names) {
                        read_images(f, |frame, img| {
                            if out.len() < room {
                                let prepared = img.map(|img| (image_id(&img), prepare(&m, &img)));
                                out.push((frame_name(&name, frame), prepared));
                            }
                        });
                    }
                    out
                })
                .await
                .map_err(|e| CtlError::Common(ctcluster_common::Error::Compute(e.to_string())))?;
                for (input, r) in read {
                    items.push(match r {
                        Ok((id, pixels)) => Item {
                            id,
                            input,
                            pixels: Ok(pixels),
                        },
                        Err(reason) => Item {
                            id: String::new(),
                            input,
                            pixels: Err(reason),
                        },
                    });
                }
            }
        }
    }
    Ok(items)
}

async fn predict_dataset(
    model: &ModelConfig,
    params: &std::sync::Arc<Vec<f32>>,
    classes: &[String],
    url: &ctcluster_common::storage::StoreUrl,
    split: &str,
) -> Result<Vec<Prediction>, CtlError> {
    let manifest = load_manifest(url).await?;
    let info = manifest.split(split, url.as_str())?;
    if manifest.image.channels as usize != model.channels {
        return Err(CtlError::Usage(format!(
            "{url} has {}-channel images; the model takes {}",
            manifest.image.channels, model.channels
        )));
    }
    let input = format!("{url}#{split}");
    let mut rows = Vec::new();
    for shard in 0..info.shards.len() {
        let data = load_shard(url, &manifest, split, shard).await?;
        for start in (0..data.labels.len()).step_by(BATCH) {
            let end = (start + BATCH).min(data.labels.len());
            // The same batch building as training and `ctctl evaluate`.
            let mut batch = BatchBuilder::new(model, &manifest.image, end - start);
            for r in start..end {
                batch.push(&data, r, None)?;
            }
            let batch = batch.finish();
            let probs = probabilities(model, params, batch.pixels, end - start).await?;
            for (i, p) in probs.chunks_exact(model.classes).enumerate() {
                let r = start + i;
                let mut pred = row(classes, data.ids[r].clone(), input.clone(), p);
                pred.label = manifest.classes.get(data.labels[r] as usize).cloned();
                rows.push(pred);
            }
        }
    }
    Ok(rows)
}
