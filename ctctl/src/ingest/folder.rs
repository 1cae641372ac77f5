//! Image folders: `DIR/<class>/...` or `DIR/<split>/<class>/...`, holding PNG (8- and 16-bit,
//! grayscale or colour), JPEG, or single-image `.npy` files.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ctcluster_common::dataset::{NpyArray, PixelType};
use ctcluster_common::local_file::{MAX_IMAGE_FILE_BYTES, read_limited};

use super::npy::npy_image;
use super::{Candidate, Decoded, Dropped, Plan, RawLabel, Reason};
use crate::CtlError;

const SPLITS: [&str; 3] = ["train", "val", "test"];

fn usage(path: &Path, e: impl std::fmt::Display) -> CtlError {
    CtlError::Usage(format!("{}: {e}", path.display()))
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>, CtlError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| usage(dir, e))? {
        let path = entry.map_err(|e| usage(dir, e))?.path();
        if path.is_dir() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Every file under `dir`, recursively, sorted.
fn files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), CtlError> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| usage(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|e| usage(dir, e)))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            files(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

fn name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `ctctl ingest folder DIR`.
pub fn folder(dir: &Path) -> Result<Plan, CtlError> {
    let top = subdirs(dir)?;
    let split_layout = !top.is_empty() && top.iter().all(|d| SPLITS.contains(&name(d).as_str()));
    let mut class_dirs: Vec<(Option<String>, PathBuf)> = Vec::new();
    if split_layout {
        for split_dir in &top {
            for class_dir in subdirs(split_dir)? {
                class_dirs.push((Some(name(split_dir)), class_dir));
            }
        }
    } else {
        class_dirs.extend(top.into_iter().map(|d| (None, d)));
    }
    if class_dirs.is_empty() {
        return Err(usage(
            dir,
            "no class folders: expected DIR/<class>/images or DIR/<train|val|test>/<class>/images",
        ));
    }
    let classes: BTreeSet<String> = class_dirs.iter().map(|(_, d)| name(d)).collect();
    let mut candidates = Vec::new();
    let mut dropped = Vec::new();
    for (split, class_dir) in class_dirs {
        let class = name(&class_dir);
        let mut paths = Vec::new();
        files(&class_dir, &mut paths)?;
        for path in paths {
            let rel = path
                .strip_prefix(dir)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            let ext = path
                .extension()
                .map(|e| e.to_string_lossy().to_lowercase())
                .unwrap_or_default();
            if !matches!(ext.as_str(), "png" | "jpg" | "jpeg" | "npy") {
                dropped.push(Dropped {
                    source: rel,
                    reason: Reason::Unreadable,
                    detail: format!("not an image file (.{ext}); PNG, JPEG and .npy are read"),
                });
                continue;
            }
            let id = rel
                .rsplit_once('.')
                .map_or(rel.as_str(), |(stem, _)| stem)
                .to_string();
            candidates.push(Candidate {
                source: rel,
                group: id.clone(),
                id,
                split: split.clone(),
                label: RawLabel::Name(class.clone()),
                load: Box::new(move || {
                    let bytes = read_limited(&path, MAX_IMAGE_FILE_BYTES, "an image file")
                        .map_err(|e| (Reason::Unreadable, format!("cannot read: {e}")))?;
                    match ext.as_str() {
                        "png" => decode_png(&bytes),
                        "npy" => decode_npy(&bytes),
                        _ => decode_jpeg(&bytes),
                    }
                    .map_err(|e| (Reason::Unreadable, e))
                }),
            });
        }
    }
    Ok(Plan {
        kind: "folder",
        source: dir.display().to_string(),
        classes: classes.into_iter().collect(),
        candidates,
        dropped,
        sidecars: Vec::new(),
        deidentification: None,
        ids_from_pixels: true,
        item_refs: Vec::new(),
    })
}

/// Refuses sizes beyond what a dataset holds, before decoding allocates for them.
fn check_side(width: u32, height: u32) -> Result<(), String> {
    let max = ctcluster_common::dataset::MAX_SIDE;
    if width == 0 || height == 0 || width > max || height > max {
        return Err(format!(
            "declares {width}x{height} pixels; 1 to {max} a side are read"
        ));
    }
    Ok(())
}

/// Drops an alpha channel: (gray, alpha) -> gray, (r, g, b, a) -> (r, g, b).
fn without_alpha(values: Vec<f32>, channels_with_alpha: usize) -> Vec<f32> {
    values
        .chunks_exact(channels_with_alpha)
        .flat_map(|p| p[..channels_with_alpha - 1].to_vec())
        .collect()
}

/// A PNG: 8- or 16-bit, grayscale or RGB (palettes expanded, alpha dropped).
pub fn decode_png(bytes: &[u8]) -> Result<Decoded, String> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder
        .read_info()
        .map_err(|e| format!("not a readable PNG: {e}"))?;
    check_side(reader.info().width, reader.info().height)?;
    let size = reader
        .output_buffer_size()
        .ok_or("PNG too large to decode")?;
    if size > 1 << 30 {
        return Err("PNG larger than 1 GiB decoded".into());
    }
    let mut buf = vec![0; size];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| format!("truncated or corrupt PNG: {e}"))?;
    buf.truncate(info.buffer_size());
    let sixteen = info.bit_depth == png::BitDepth::Sixteen;
    let values: Vec<f32> = if sixteen {
        buf.chunks_exact(2)
            .map(|b| f32::from(u16::from_be_bytes([b[0], b[1]])))
            .collect()
    } else {
        buf.iter().map(|&b| f32::from(b)).collect()
    };
    let (values, channels) = match info.color_type {
        png::ColorType::Grayscale => (values, 1),
        png::ColorType::GrayscaleAlpha => (without_alpha(values, 2), 1),
        png::ColorType::Rgb => (values, 3),
        png::ColorType::Rgba => (without_alpha(values, 4), 3),
        png::ColorType::Indexed => return Err("palette PNG was not expanded".into()),
    };
    Ok(Decoded {
        height: info.height,
        width: info.width,
        channels,
        pixel_type: if sixteen {
            PixelType::U16
        } else {
            PixelType::U8
        },
        values,
    })
}

/// A JPEG: 8-bit grayscale or RGB, or 16-bit lossless grayscale.
pub fn decode_jpeg(bytes: &[u8]) -> Result<Decoded, String> {
    let mut decoder = jpeg_decoder::Decoder::new(std::io::Cursor::new(bytes));
    decoder
        .read_info()
        .map_err(|e| format!("not a readable JPEG: {e}"))?;
    if let Some(info) = decoder.info() {
        check_side(u32::from(info.width), u32::from(info.height))?;
    }
    let data = decoder
        .decode()
        .map_err(|e| format!("truncated or corrupt JPEG: {e}"))?;
    let info = decoder.info().ok_or("JPEG without a frame header")?;
    let (channels, pixel_type, values) = match info.pixel_format {
        jpeg_decoder::PixelFormat::L8 => (
            1,
            PixelType::U8,
            data.iter().map(|&b| f32::from(b)).collect(),
        ),
        jpeg_decoder::PixelFormat::RGB24 => (
            3,
            PixelType::U8,
            data.iter().map(|&b| f32::from(b)).collect(),
        ),
        jpeg_decoder::PixelFormat::L16 => (
            1,
            PixelType::U16,
            // jpeg-decoder writes 16-bit samples in native byte order.
            data.chunks_exact(2)
                .map(|b| f32::from(u16::from_ne_bytes([b[0], b[1]])))
                .collect(),
        ),
        jpeg_decoder::PixelFormat::CMYK32 => return Err("CMYK JPEG is not supported".into()),
    };
    Ok(Decoded {
        height: u32::from(info.height),
        width: u32::from(info.width),
        channels,
        pixel_type,
        values,
    })
}

/// A single image as .npy: (H, W) or (H, W, C).
pub fn decode_npy(bytes: &[u8]) -> Result<Decoded, String> {
    let a = NpyArray::parse(bytes, "image").map_err(|e| e.to_string())?;
    let (h, w, c) = match a.shape.as_slice() {
        [h, w] => (*h, *w, 1),
        [h, w, c] if *c == 1 || *c == 3 => (*h, *w, *c),
        other => return Err(format!("array of shape {other:?} is not one image")),
    };
    check_side(
        u32::try_from(w).unwrap_or(u32::MAX),
        u32::try_from(h).unwrap_or(u32::MAX),
    )?;
    npy_image(&a.descr, &a.data, (h, w, c))
}
