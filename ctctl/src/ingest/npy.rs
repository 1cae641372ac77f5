//! numpy sources: a pair of `.npy` files (images, labels) and MedMNIST-style `.npz` archives.

use std::path::Path;
use std::sync::Arc;

use ctcluster_common::dataset::{NpyArray, PixelType, read_npz};
use ctcluster_common::local_file::{MAX_ARRAY_FILE_BYTES, read_limited};

use super::{Candidate, Decoded, Plan, RawLabel, Reason};
use crate::CtlError;

/// The pixel type and values of numpy elements, for the dtypes images come in.
pub fn elements(descr: &str, bytes: &[u8]) -> Option<(PixelType, Vec<f32>)> {
    let f = |n: usize, conv: fn(&[u8]) -> f32| bytes.chunks_exact(n).map(conv).collect();
    Some(match descr {
        "|u1" | "u1" => (PixelType::U8, bytes.iter().map(|&b| f32::from(b)).collect()),
        "<u2" => (
            PixelType::U16,
            f(2, |b| f32::from(u16::from_le_bytes([b[0], b[1]]))),
        ),
        "<i2" => (
            PixelType::I16,
            f(2, |b| f32::from(i16::from_le_bytes([b[0], b[1]]))),
        ),
        "<f4" => (
            PixelType::F32,
            f(4, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        "<f8" => (
            PixelType::F32,
            f(8, |b| {
                f64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32
            }),
        ),
        _ => return None,
    })
}

/// One image of shape (h, w, c) from numpy elements of type `descr`.
pub fn npy_image(
    descr: &str,
    bytes: &[u8],
    (h, w, c): (usize, usize, usize),
) -> Result<Decoded, String> {
    let (pixel_type, values) =
        elements(descr, bytes).ok_or_else(|| format!("dtype {descr} is not supported"))?;
    if values.len() != h * w * c {
        return Err("the array is shorter than its shape".into());
    }
    Ok(Decoded {
        height: h as u32,
        width: w as u32,
        channels: c as u32,
        pixel_type,
        values,
    })
}

/// (height, width, channels) of the images in an (N, H, W) or (N, H, W, C) array.
fn image_shape(a: &NpyArray, what: &str) -> Result<(usize, usize, usize), CtlError> {
    match a.shape.as_slice() {
        [_, h, w] => Ok((*h, *w, 1)),
        [_, h, w, c] if *c == 1 || *c == 3 => Ok((*h, *w, *c)),
        other => Err(CtlError::Usage(format!(
            "{what}: images have shape {other:?}; expected (N, H, W) or (N, H, W, C) with C 1 or 3"
        ))),
    }
}

fn labels_of(a: &NpyArray, n: usize, what: &str) -> Result<Vec<i64>, CtlError> {
    let labels = a.to_i64(what)?;
    if labels.len() != n {
        return Err(CtlError::Usage(format!(
            "{what}: {} labels for {n} images (one integer label per image; multi-label arrays are not supported)",
            labels.len()
        )));
    }
    Ok(labels)
}

/// Candidates for every image of one array.
fn candidates(
    images: Arc<NpyArray>,
    labels: &[i64],
    what: &str,
    split: Option<&str>,
    id_prefix: &str,
) -> Result<Vec<Candidate>, CtlError> {
    let (h, w, c) = image_shape(&images, what)?;
    let item = NpyArray::item_size(&images.descr).unwrap_or(1);
    let per = h * w * c * item;
    if elements(&images.descr, &[]).is_none() {
        return Err(CtlError::Usage(format!(
            "{what}: pixel dtype {} is not supported (u1, <u2, <i2, <f4, <f8)",
            images.descr
        )));
    }
    Ok(labels
        .iter()
        .enumerate()
        .map(|(i, &label)| {
            let images = images.clone();
            let id = format!("{id_prefix}{i:06}");
            Candidate {
                source: format!("{what}[{i}]"),
                group: id.clone(),
                id,
                split: split.map(String::from),
                label: RawLabel::Index(label),
                load: Box::new(move || {
                    let bytes = images.data.get(i * per..(i + 1) * per).ok_or((
                        Reason::Unreadable,
                        "the array ends before this image".to_string(),
                    ))?;
                    npy_image(&images.descr, bytes, (h, w, c)).map_err(|e| (Reason::Unreadable, e))
                }),
            }
        })
        .collect())
}

fn read_npy(path: &Path) -> Result<NpyArray, CtlError> {
    let what = path.display().to_string();
    let bytes = read_limited(path, MAX_ARRAY_FILE_BYTES, "an .npy file")?;
    Ok(NpyArray::parse(&bytes, &what)?)
}

fn default_classes(labels: &[i64]) -> Vec<String> {
    let max = labels
        .iter()
        .copied()
        .filter(|&l| l >= 0)
        .max()
        .unwrap_or(1)
        .max(1);
    (0..=max).map(|i| i.to_string()).collect()
}

/// `ctctl ingest npy IMAGES.npy LABELS.npy`.
pub fn npy_pair(images: &Path, labels: &Path) -> Result<Plan, CtlError> {
    let img = read_npy(images)?;
    let lab = read_npy(labels)?;
    let n = img.shape.first().copied().unwrap_or(0);
    let labels = labels_of(&lab, n, &labels.display().to_string())?;
    let what = images.display().to_string();
    Ok(Plan {
        kind: "npy",
        source: what.clone(),
        classes: default_classes(&labels),
        candidates: candidates(Arc::new(img), &labels, &what, None, "img-")?,
        dropped: Vec::new(),
        sidecars: Vec::new(),
        deidentification: None,
        ids_from_pixels: false,
        item_refs: Vec::new(),
    })
}

/// `ctctl ingest npz FILE.npz`: splits `train`, `val`, `test` as the archive has them.
pub fn npz(file: &Path) -> Result<Plan, CtlError> {
    let what = file.display().to_string();
    let mut arrays = read_npz(file)?;
    let mut all = Vec::new();
    let mut every_label = Vec::new();
    for split in ["train", "val", "test"] {
        let (Some(images), Some(labels)) = (
            arrays.remove(&format!("{split}_images")),
            arrays.remove(&format!("{split}_labels")),
        ) else {
            continue;
        };
        let n = images.shape.first().copied().unwrap_or(0);
        let labels = labels_of(&labels, n, &format!("{what}:{split}_labels"))?;
        every_label.extend_from_slice(&labels);
        all.extend(candidates(
            Arc::new(images),
            &labels,
            &format!("{what}:{split}_images"),
            Some(split),
            &format!("{split}-"),
        )?);
    }
    if all.is_empty() {
        return Err(CtlError::Usage(format!(
            "{what}: no train_images/train_labels (MedMNIST layout) arrays"
        )));
    }
    Ok(Plan {
        kind: "npz",
        source: what,
        classes: default_classes(&every_label),
        candidates: all,
        dropped: Vec::new(),
        sidecars: Vec::new(),
        deidentification: None,
        ids_from_pixels: false,
        item_refs: Vec::new(),
    })
}
