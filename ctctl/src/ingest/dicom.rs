//! DICOM studies: files under a folder labelled by a CSV. Pixel data is decoded for the transfer
//! syntaxes dicom-rs supports (native, deflate, RLE, JPEG baseline/extended/lossless), the
//! modality rescale is applied so CT is stored as Hounsfield units (i16), and headers are
//! de-identified; the patient pseudonym decides the split.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ctcluster_common::dataset::{Deidentification, PixelType};
use ctcluster_common::local_file::{MAX_IMAGE_FILE_BYTES, read_limited};
use dicom_dictionary_std::tags;
use dicom_object::OpenFileOptions;
use dicom_object::file::ReadPreamble;
use dicom_pixeldata::PixelDecoder;
use serde::Serialize;

use super::deid::{AuditEntry, DeidKey, deidentify};
use super::{Candidate, Decoded, Dropped, Plan, RawLabel, Reason};
use crate::CtlError;

/// The labels CSV, keyed by file path relative to the folder.
struct Labels {
    rows: BTreeMap<String, (String, Option<String>)>,
}

fn normalise(rel: &str) -> String {
    rel.trim().trim_start_matches("./").replace('\\', "/")
}

fn read_labels(path: &Path) -> Result<Labels, CtlError> {
    let what = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|e| CtlError::Usage(format!("{what}: {e}")))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<String> = lines
        .next()
        .ok_or_else(|| CtlError::Usage(format!("{what}: empty; expected a header file,label")))?
        .split(',')
        .map(|h| h.trim().trim_matches('"').to_lowercase())
        .collect();
    let col = |name: &str| header.iter().position(|h| h == name);
    let (Some(file), Some(label)) = (col("file"), col("label")) else {
        return Err(CtlError::Usage(format!(
            "{what}: the header must name the columns file and label (and optionally split)"
        )));
    };
    let split = col("split");
    let mut rows = BTreeMap::new();
    for (n, line) in lines.enumerate() {
        let cells: Vec<&str> = line
            .split(',')
            .map(|c| c.trim().trim_matches('"'))
            .collect();
        let get = |i: usize| cells.get(i).copied().unwrap_or("");
        if get(file).is_empty() || get(label).is_empty() {
            return Err(CtlError::Usage(format!(
                "{what}: line {}: needs a file and a label",
                n + 2
            )));
        }
        let s = split.map(get).filter(|s| !s.is_empty()).map(String::from);
        rows.insert(normalise(get(file)), (get(label).to_string(), s));
    }
    Ok(Labels { rows })
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), CtlError> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| CtlError::Usage(format!("{}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct AuditFile<'a> {
    format: &'static str,
    profile: &'static str,
    key_fingerprint: String,
    files: Vec<AuditRecord<'a>>,
}

#[derive(Serialize)]
struct AuditRecord<'a> {
    id: &'a str,
    patient: &'a str,
    attributes: &'a [AuditEntry],
}

/// The confidentiality profile ingest applies, as recorded in the audit and the manifest.
const DEID_PROFILE: &str =
    "DICOM PS3.15 E.1 basic application level confidentiality profile (allow-list)";

/// Kinds of DICOM image left out unless the user opts in.
#[derive(Clone, Copy, Debug, Default)]
pub struct Allow {
    /// Images flagged with burned-in annotation.
    pub burned_in: bool,
    /// Secondary-capture objects.
    pub secondary_capture: bool,
}

/// SOP classes of secondary capture (single-frame and the multi-frame ones): PS3.4 B.5.
const SECONDARY_CAPTURE: &str = "1.2.840.10008.5.1.4.1.1.7";

fn number_f64(header: &dicom_object::InMemDicomObject, tag: dicom_core::Tag) -> Option<f64> {
    text(header, tag).parse().ok()
}

fn text(header: &dicom_object::InMemDicomObject, tag: dicom_core::Tag) -> String {
    header
        .get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_matches(['\0', ' ']).to_string())
        .unwrap_or_default()
}

/// Why a header's image must be left out (unless allowed): burned-in annotation, or a
/// secondary capture.
fn risky_pixels(header: &dicom_object::InMemDicomObject, allow: Allow) -> Option<(Reason, String)> {
    let burned = text(header, tags::BURNED_IN_ANNOTATION);
    if !allow.burned_in && burned.eq_ignore_ascii_case("YES") {
        return Some((
            Reason::BurnedInAnnotation,
            "BurnedInAnnotation is YES: text in the pixels would survive de-identification \
             (--allow-burned-in keeps such images)"
                .into(),
        ));
    }
    let class = text(header, tags::SOP_CLASS_UID);
    let conversion = text(header, tags::CONVERSION_TYPE);
    let capture = class == SECONDARY_CAPTURE
        || class.starts_with(&format!("{SECONDARY_CAPTURE}."))
        || !conversion.is_empty();
    if !allow.secondary_capture && capture {
        return Some((
            Reason::SecondaryCapture,
            format!(
                "a secondary capture (SOP class {class}{}): screenshots and scans often show \
                 identifying text (--allow-secondary-capture keeps them)",
                if conversion.is_empty() {
                    String::new()
                } else {
                    format!(", conversion {conversion}")
                }
            ),
        ));
    }
    None
}

/// `ctctl ingest dicom DIR --labels LABELS.csv`.
pub fn dicom(
    dir: &Path,
    labels: &Path,
    key: Option<&DeidKey>,
    allow: Allow,
) -> Result<Plan, CtlError> {
    let table = read_labels(labels)?;
    let mut paths = Vec::new();
    walk(dir, &mut paths)?;
    let labels_abs = labels.canonicalize().ok();
    let mut candidates = Vec::new();
    let mut dropped = Vec::new();
    let mut metadata = Vec::new();
    let mut audits: Vec<(String, String, Vec<AuditEntry>)> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for path in paths {
        if path.canonicalize().ok() == labels_abs {
            continue;
        }
        let rel = normalise(&path.strip_prefix(dir).unwrap_or(&path).to_string_lossy());
        seen.insert(rel.clone());
        // Nothing of a file over the limit is read, not even its header.
        if let Ok(m) = std::fs::metadata(&path)
            && m.len() > MAX_IMAGE_FILE_BYTES
        {
            dropped.push(Dropped {
                source: rel,
                reason: Reason::Unreadable,
                detail: format!(
                    "{} bytes, more than the {MAX_IMAGE_FILE_BYTES} read for one image",
                    m.len()
                ),
            });
            continue;
        }
        // The header only: the pixels are read later, one file at a time.
        let header = match OpenFileOptions::new()
            .read_until(tags::PIXEL_DATA)
            .open_file(&path)
        {
            Ok(h) => h,
            Err(e) => {
                dropped.push(Dropped {
                    source: rel,
                    reason: Reason::Unreadable,
                    detail: format!("not a readable DICOM file: {e}"),
                });
                continue;
            }
        };
        if let Some((reason, detail)) = risky_pixels(&header, allow) {
            dropped.push(Dropped {
                source: rel,
                reason,
                detail,
            });
            continue;
        }
        let d = deidentify(&header, key);
        let sop = text(&header, tags::SOP_INSTANCE_UID);
        // The id never carries the file's path or name: a keyed pseudonym of the instance
        // UID (or, without one, of the path), or with --keep-identifiers the UID itself (a
        // hash of the path when there is none).
        let id = match (key, sop.is_empty()) {
            (Some(k), false) => format!("dcm-{}", k.short("sop", &sop)),
            (Some(k), true) => format!("dcm-{}", k.short("file", &rel)),
            (None, false) => format!("dcm-{sop}"),
            (None, true) => format!(
                "dcm-{}",
                &ctcluster_common::checkpoint::sha(rel.as_bytes())[..16]
            ),
        };
        let (label, split) = match table.rows.get(&rel) {
            Some((l, s)) => (RawLabel::Name(l.clone()), s.clone()),
            None => (RawLabel::Missing, None),
        };
        // A multi-frame object (a cine loop, a volume) gives one sample per frame, all of the
        // file's label and patient (so all in one split), read from one opening of the file.
        let frames = match frame_count(&header) {
            Ok(n) => n,
            Err((reason, detail)) => {
                dropped.push(Dropped {
                    source: rel,
                    reason,
                    detail,
                });
                continue;
            }
        };
        let source = std::sync::Arc::new(FrameSource {
            path,
            open: std::sync::Mutex::new(None),
            left: std::sync::atomic::AtomicU32::new(frames),
        });
        for frame in 0..frames {
            let (frame_id, frame_source) = if frames == 1 {
                (id.clone(), rel.clone())
            } else {
                (
                    format!("{id}-f{:04}", frame + 1),
                    format!("{rel}#frame{}", frame + 1),
                )
            };
            // One metadata line per sample: its id, its patient's pseudonym, and for a frame
            // which one of how many.
            let mut meta = serde_json::Map::new();
            meta.insert("id".into(), frame_id.clone().into());
            meta.insert("patient".into(), d.patient.clone().into());
            if frames > 1 {
                meta.insert("frame".into(), (frame + 1).into());
                meta.insert("frames".into(), frames.into());
            }
            for (k, v) in &d.kept {
                meta.insert(k.clone(), v.clone().into());
            }
            metadata.push(serde_json::Value::Object(meta));
            let file = source.clone();
            candidates.push(Candidate {
                source: frame_source,
                id: frame_id,
                split: split.clone(),
                group: d.patient.clone(),
                label: label.clone(),
                load: Box::new(move || file.load(frame)),
            });
        }
        audits.push((id, d.patient, d.audit));
    }
    for rel in table.rows.keys() {
        if !seen.contains(rel) {
            dropped.push(Dropped {
                source: rel.clone(),
                reason: Reason::Unreadable,
                detail: format!("listed in {} but not found", labels.display()),
            });
        }
    }
    let mut classes: Vec<String> = table.rows.values().map(|(l, _)| l.clone()).collect();
    classes.sort_by(|a, b| match (a.parse::<i64>(), b.parse::<i64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.cmp(b),
    });
    classes.dedup();
    let mut sidecars = Vec::new();
    let mut lines = Vec::new();
    for m in &metadata {
        lines.extend(serde_json::to_vec(m).unwrap_or_default());
        lines.push(b'\n');
    }
    sidecars.push(("dicom-metadata.jsonl".to_string(), lines));
    let deidentification = key.map(|k| Deidentification {
        profile: DEID_PROFILE.into(),
        key_fingerprint: k.fingerprint(),
    });
    if let Some(k) = key {
        let audit = AuditFile {
            format: "ctcluster.deid-audit.v1",
            profile: DEID_PROFILE,
            key_fingerprint: k.fingerprint(),
            files: audits
                .iter()
                .map(|(id, patient, attributes)| AuditRecord {
                    id,
                    patient,
                    attributes,
                })
                .collect(),
        };
        sidecars.push((
            "deid-audit.json".to_string(),
            serde_json::to_vec_pretty(&audit).unwrap_or_default(),
        ));
    }
    Ok(Plan {
        kind: "dicom",
        source: dir.display().to_string(),
        classes,
        candidates,
        dropped,
        sidecars,
        ids_from_pixels: false,
        item_refs: Vec::new(),
        deidentification,
    })
}

/// One file's frames as ingest reads them: the file is opened once, by whichever of its
/// frames' loaders runs first, and let go when the last has run.
struct FrameSource {
    path: PathBuf,
    open: std::sync::Mutex<Option<std::sync::Arc<dicom_object::DefaultDicomObject>>>,
    left: std::sync::atomic::AtomicU32,
}

impl FrameSource {
    fn load(&self, frame: u32) -> Result<Decoded, (Reason, String)> {
        let obj = {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            match open.as_ref() {
                Some(obj) => obj.clone(),
                None => {
                    let bytes = read_limited(&self.path, MAX_IMAGE_FILE_BYTES, "a DICOM file")
                        .map_err(|e| (Reason::Unreadable, format!("cannot read: {e}")))?;
                    let obj = std::sync::Arc::new(open_bytes(&bytes)?);
                    *open = Some(obj.clone());
                    obj
                }
            }
        };
        let out = pixels_of(&obj, frame);
        if self.left.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
            *self.open.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        out
    }
}

/// Decodes a single-frame DICOM file's pixels (with or without the 128-byte preamble): HU for
/// CT. A multi-frame object is refused here; [`for_each_frame`] reads every frame.
pub fn decode_dicom(bytes: &[u8]) -> Result<Decoded, (Reason, String)> {
    let obj = open_bytes(bytes)?;
    let frames = frame_count(&obj)?;
    if frames > 1 {
        return Err((
            Reason::MultiFrame,
            format!("{frames} frames: read them one by one"),
        ));
    }
    pixels_of(&obj, 0)
}

/// Every frame of a DICOM file whose pixels may be shown (`ctctl predict` and `explain`), each
/// handed to `f` with its 0-based number as soon as it is decoded (a volume is never held
/// decoded whole). Images flagged with burned-in annotation and secondary captures are
/// refused, as `ctctl ingest` leaves them out by default; so is an object that cannot be
/// opened (the error is returned, `f` is not called).
pub fn for_each_frame(
    bytes: &[u8],
    mut f: impl FnMut(u32, u32, Result<Decoded, (Reason, String)>),
) -> Result<(), (Reason, String)> {
    let obj = open_bytes(bytes)?;
    if let Some(refused) = risky_pixels(&obj, Allow::default()) {
        return Err(refused);
    }
    let frames = frame_count(&obj)?;
    for frame in 0..frames {
        f(frame, frames, pixels_of(&obj, frame));
    }
    Ok(())
}

fn open_bytes(bytes: &[u8]) -> Result<dicom_object::DefaultDicomObject, (Reason, String)> {
    OpenFileOptions::new()
        .read_preamble(ReadPreamble::Auto)
        .from_reader(std::io::Cursor::new(bytes))
        .map_err(|e| {
            (
                Reason::Unreadable,
                format!("not a readable DICOM file: {e}"),
            )
        })
}

/// Most frames read from one multi-frame object (a cine loop or a volume).
pub const MAX_FRAMES: u32 = 4096;

/// The frames an object holds: its NumberOfFrames (1 when absent), at most [`MAX_FRAMES`].
pub fn frame_count(obj: &dicom_object::InMemDicomObject) -> Result<u32, (Reason, String)> {
    let declared = text(obj, tags::NUMBER_OF_FRAMES);
    if declared.is_empty() {
        return Ok(1);
    }
    match declared.parse::<u64>() {
        Ok(0) | Err(_) => Err((
            Reason::Unreadable,
            format!("NumberOfFrames is {declared:?}, not a frame count"),
        )),
        Ok(n) if n > u64::from(MAX_FRAMES) => Err((
            Reason::MultiFrame,
            format!("{n} frames; at most {MAX_FRAMES} are read from one object"),
        )),
        Ok(n) => Ok(n as u32),
    }
}

/// The pixels of one frame (0-based) of an opened object: the modality LUT applied (Hounsfield
/// units for CT), and MONOCHROME1 images (where the lowest value is white, as many X-ray
/// systems store them) inverted within their value range, so that bright means dense in every
/// image.
fn pixels_of(
    obj: &dicom_object::DefaultDicomObject,
    frame: u32,
) -> Result<Decoded, (Reason, String)> {
    let unreadable = |e: String| (Reason::Unreadable, e);
    if obj.get(tags::PIXEL_DATA).is_none() {
        let class = obj
            .get(tags::SOP_CLASS_UID)
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim_matches(['\0', ' ']).to_string())
            .unwrap_or_default();
        return Err((
            Reason::NoPixelData,
            format!("no pixel data (SOP class {class}): not an image"),
        ));
    }
    // Check the declared size before anything is allocated for it.
    let number = |tag| {
        obj.get(tag)
            .and_then(|e| e.to_str().ok())
            .and_then(|v| v.trim_matches(['\0', ' ']).parse::<u64>().ok())
    };
    let (rows, cols) = (
        number(tags::ROWS).unwrap_or(0),
        number(tags::COLUMNS).unwrap_or(0),
    );
    let max = u64::from(ctcluster_common::dataset::MAX_SIDE);
    if rows == 0 || cols == 0 || rows > max || cols > max {
        return Err(unreadable(format!(
            "declares {rows}x{cols} pixels; 1 to {max} a side are read"
        )));
    }
    let frames = frame_count(obj)?;
    if frame >= frames {
        return Err(unreadable(format!("frame {} of {frames}", frame + 1)));
    }
    let pixels = obj
        .decode_pixel_data_frame(frame)
        .map_err(|e| unreadable(format!("pixel data cannot be decoded: {e}")))?;
    let values: Vec<f32> = pixels
        .to_vec_frame(0)
        .map_err(|e| unreadable(format!("pixel values cannot be converted: {e}")))?;
    let rescaled =
        obj.get(tags::RESCALE_SLOPE).is_some() || obj.get(tags::RESCALE_INTERCEPT).is_some();
    let signed = pixels.pixel_representation() == dicom_pixeldata::PixelRepresentation::Signed;
    let pixel_type = if rescaled || signed {
        PixelType::I16
    } else if pixels.bits_allocated() <= 8 {
        PixelType::U8
    } else {
        PixelType::U16
    };
    let values = if pixels.photometric_interpretation()
        == &dicom_pixeldata::PhotometricInterpretation::Monochrome1
    {
        // The stored range after the modality LUT: its ends swap.
        let bits = u32::from(pixels.bits_stored()).clamp(1, 32);
        let (lo, hi) = if signed {
            (
                -(2f64.powi(bits as i32 - 1)),
                2f64.powi(bits as i32 - 1) - 1.0,
            )
        } else {
            (0.0, 2f64.powi(bits as i32) - 1.0)
        };
        let slope = number_f64(obj, tags::RESCALE_SLOPE).unwrap_or(1.0);
        let intercept = number_f64(obj, tags::RESCALE_INTERCEPT).unwrap_or(0.0);
        let ends = (lo * slope + intercept) + (hi * slope + intercept);
        values
            .into_iter()
            .map(|v| (ends - f64::from(v)) as f32)
            .collect()
    } else {
        values
    };
    let values = if pixel_type == PixelType::I16 {
        values
            .into_iter()
            .map(|v| v.round().clamp(-32768.0, 32767.0))
            .collect()
    } else {
        values
    };
    Ok(Decoded {
        height: pixels.rows(),
        width: pixels.columns(),
        channels: u32::from(pixels.samples_per_pixel()),
        pixel_type,
        values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A synthetic X-ray as archives export them: JPEG 2000 lossless, MONOCHROME1, 12 of 16
    /// bits (tests/fixtures/make_j2k_monochrome1.py made it: a gradient 100 + 40x + 10y with a
    /// disc of 3000 at (40, 20)).
    const J2K_MONOCHROME1: &[u8] = include_bytes!("../../../tests/fixtures/j2k-monochrome1.dcm");

    #[test]
    fn jpeg_2000_is_decoded_and_monochrome1_inverted() {
        let img = decode_dicom(J2K_MONOCHROME1).unwrap();
        assert_eq!((img.height, img.width, img.channels), (48, 64, 1));
        assert_eq!(img.pixel_type, PixelType::U16);
        let at = |x: usize, y: usize| img.values[y * 64 + x];
        // Stored 100 at the origin, 3000 in the disc; inverted within 12 bits (0..=4095).
        assert_eq!(at(0, 0), 4095.0 - 100.0);
        assert_eq!(at(63, 47), 4095.0 - (100.0 + 40.0 * 63.0 + 10.0 * 47.0));
        assert_eq!(at(40, 20), 4095.0 - 3000.0);
        // Bright means dense: the disc is darker than its surroundings once inverted.
        assert!(at(40, 20) < at(30, 20));
    }

    #[test]
    fn images_that_may_show_identifying_text_are_refused_for_display() {
        let mut obj = open_bytes(J2K_MONOCHROME1).unwrap();
        obj.put(dicom_core::DataElement::new(
            tags::BURNED_IN_ANNOTATION,
            dicom_core::VR::CS,
            dicom_core::PrimitiveValue::from("YES"),
        ));
        let mut bytes = Vec::new();
        obj.write_all(&mut bytes).unwrap();
        let (reason, _) = for_each_frame(&bytes, |_, _, _| panic!("shown")).unwrap_err();
        assert_eq!(reason, Reason::BurnedInAnnotation);
        assert!(decode_dicom(&bytes).is_ok());
        let mut shown = 0;
        for_each_frame(J2K_MONOCHROME1, |frame, frames, img| {
            assert_eq!((frame, frames), (0, 1));
            assert!(img.is_ok());
            shown += 1;
        })
        .unwrap();
        assert_eq!(shown, 1);
    }
}
