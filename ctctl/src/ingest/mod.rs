//! `ctctl ingest`: turns the data a radiology team has (numpy arrays, MedMNIST archives, image
//! folders, DICOM studies) into a clean dataset of Arrow shards, with a report naming every item
//! left out and why. Sources list candidates; this module splits, orders, decodes (off the
//! async threads), cleans and writes them, then the manifest last.

mod clean;
mod deid;
mod dicom;
mod folder;
mod image;
mod npy;

use std::collections::BTreeMap;
use std::path::PathBuf;

use ctcluster_common::dataset::{DatasetWriter, Deidentification, ImageInfo, MANIFEST_FILE};
use ctcluster_common::rng::{derive, hash_str};
use ctcluster_common::seal::DataKey;
use ctcluster_common::storage::StoreUrl;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

pub use clean::{Cleaner, Dropped, Modified, OnShape, Reason, Target};
pub use deid::{DeidKey, pseudonym};
pub use image::Decoded;

/// The image decoders ingest runs on untrusted files, by kind (for fuzzing and tools): `png`,
/// `jpeg`, `npy` or `dicom`.
pub fn decode_file(kind: &str, bytes: &[u8]) -> Result<Decoded, String> {
    match kind {
        "png" => folder::decode_png(bytes),
        "jpeg" => folder::decode_jpeg(bytes),
        "npy" => folder::decode_npy(bytes),
        "dicom" => dicom::decode_dicom(bytes).map_err(|(_, e)| e),
        other => Err(format!("unknown image kind {other:?}")),
    }
}

/// [`decode_file`] for images whose pixels will be shown or acted on outside a dataset
/// (`ctctl predict`, `ctctl explain`), image by image: `f` gets each image with its frame
/// (0-based, and the count) when the file is a multi-frame DICOM object, `None` otherwise.
/// DICOM images flagged with burned-in annotation and secondary captures are refused, as
/// ingest leaves them out by default.
pub fn decode_shown(
    kind: &str,
    bytes: &[u8],
    mut f: impl FnMut(Option<(u32, u32)>, Result<Decoded, String>),
) {
    match kind {
        "dicom" => {
            let each = |frame, frames, img: Result<Decoded, (Reason, String)>| {
                f(
                    (frames > 1).then_some((frame, frames)),
                    img.map_err(|(_, e)| e),
                )
            };
            if let Err((_, e)) = dicom::for_each_frame(bytes, each) {
                f(None, Err(e));
            }
        }
        other => f(None, decode_file(other, bytes)),
    }
}

use crate::CtlError;
use crate::render::safe;

/// The report's file name inside the dataset prefix.
pub const REPORT_FILE: &str = "ingest-report.json";

/// A label as the source gives it.
#[derive(Clone, Debug, PartialEq)]
pub enum RawLabel {
    /// A class index.
    Index(i64),
    /// A class name.
    Name(String),
    /// None given.
    Missing,
}

/// Reads and decodes one item, or says why it cannot.
pub type Loader = Box<dyn FnOnce() -> Result<Decoded, (Reason, String)> + Send>;

/// One item a source offers.
pub struct Candidate {
    /// Where it comes from, as the report names it.
    pub source: String,
    /// The sample id written to the shard.
    pub id: String,
    /// The source's split, if it has splits.
    pub split: Option<String>,
    /// Items of one group (one patient) always land in the same split.
    pub group: String,
    /// Its label.
    pub label: RawLabel,
    /// How to get its pixels.
    pub load: Loader,
}

/// What a source found: candidates, classes, and files to write beside the shards.
pub struct Plan {
    /// `npy`, `npz`, `folder` or `dicom`.
    pub kind: &'static str,
    /// The source, as given.
    pub source: String,
    /// Class names in label order.
    pub classes: Vec<String>,
    /// The items.
    pub candidates: Vec<Candidate>,
    /// Items left out while listing (recorded in the report).
    pub dropped: Vec<Dropped>,
    /// Extra files (name, bytes) written into the dataset prefix before the manifest.
    pub sidecars: Vec<(String, Vec<u8>)>,
    /// Sample ids come from the pixels, not from `Candidate::id` (whose path-derived value
    /// only groups items for the split).
    pub ids_from_pixels: bool,
    /// Every listed item's reference in the stored report (filled by [`run`]).
    pub item_refs: Vec<(String, String)>,
    /// How the images were de-identified (DICOM with a pseudonym key), for the manifest.
    pub deidentification: Option<Deidentification>,
}

/// Options every source shares.
#[derive(Clone, Debug, PartialEq, clap::Args)]
pub struct IngestArgs {
    /// Where to write the dataset (URL or local folder).
    #[arg(long)]
    pub out: String,
    /// Rows per shard.
    #[arg(long, default_value_t = 2048)]
    pub shard_rows: usize,
    /// Image size HxW (e.g. 64x64); default: the first good image's.
    #[arg(long, value_parser = parse_size)]
    pub size: Option<(u32, u32)>,
    /// What to do with images of another size.
    #[arg(long, value_enum, default_value = "resize")]
    pub on_shape: OnShape,
    /// Class names in label order (comma-separated); labels outside them are reported.
    #[arg(long, value_delimiter = ',')]
    pub classes: Option<Vec<String>>,
    /// For sources without splits: the fraction of groups (patients) put in `val`.
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
    /// For sources without splits: the fraction of groups (patients) put in `test`.
    #[arg(long, default_value_t = 0.2)]
    pub test_fraction: f64,
    /// Seed of the split assignment.
    #[arg(long, default_value_t = 0)]
    pub split_seed: u64,
    /// Seal the shards with this key (AES-256-GCM; see `ctctl keys new`).
    #[arg(long)]
    pub encrypt_key: Option<String>,
}

impl IngestArgs {
    /// The options `ctctl ingest` has by default, writing to `out`: for callers that are not
    /// the command line (`ctctl dataset from-npz`, the benchmarks).
    pub fn to(out: impl Into<String>) -> Self {
        IngestArgs {
            out: out.into(),
            shard_rows: 2048,
            size: None,
            on_shape: OnShape::Resize,
            classes: None,
            val_fraction: 0.1,
            test_fraction: 0.2,
            split_seed: 0,
            encrypt_key: None,
        }
    }
}

fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (h, w) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("{s:?}: expected HxW, e.g. 64x64"))?;
    let side = |v: &str| {
        v.trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=ctcluster_common::dataset::MAX_SIDE).contains(n))
            .ok_or_else(|| format!("{s:?}: sides must be 1..=4096"))
    };
    Ok((side(h)?, side(w)?))
}

/// `ctctl ingest` sources.
#[derive(Debug, clap::Subcommand)]
pub enum IngestSource {
    /// A pair of .npy files: images (N,H,W) or (N,H,W,C) and labels (N) or (N,1).
    Npy {
        /// The images array.
        images: PathBuf,
        /// The labels array.
        labels: PathBuf,
        /// Options every source shares.
        #[command(flatten)]
        args: IngestArgs,
    },
    /// A MedMNIST-style .npz (train/val/test images and labels, kept as splits).
    Npz {
        /// The archive.
        file: PathBuf,
        /// Options every source shares.
        #[command(flatten)]
        args: IngestArgs,
    },
    /// A folder with one subfolder per class (PNG, JPEG or single-image .npy files), or
    /// train/val/test folders each holding class subfolders.
    Folder {
        /// The folder.
        dir: PathBuf,
        /// Options every source shares.
        #[command(flatten)]
        args: IngestArgs,
    },
    /// DICOM files under a folder, labelled by a CSV (`file,label`, file relative to DIR);
    /// de-identified, with keyed patient pseudonyms deciding the split.
    Dicom {
        /// The folder (searched recursively).
        dir: PathBuf,
        /// The labels CSV: a header `file,label` (an optional `split` column keeps a split).
        #[arg(long)]
        labels: PathBuf,
        /// The pseudonym key file (or set CT_DEID_KEY to the key in hex). `ctctl keys new`
        /// makes one.
        #[arg(long, env = "CT_DEID_KEY_FILE")]
        deid_key: Option<PathBuf>,
        /// Keep identifying attributes in the metadata sidecar (for data that is already
        /// anonymous; off by default).
        #[arg(long)]
        keep_identifiers: bool,
        /// Ingest images whose header flags burned-in annotation (reported and left out by
        /// default: text drawn into the pixels survives de-identification).
        #[arg(long)]
        allow_burned_in: bool,
        /// Ingest secondary-capture objects (screenshots, scanned documents; reported and
        /// left out by default).
        #[arg(long)]
        allow_secondary_capture: bool,
        /// Options every source shares.
        #[command(flatten)]
        args: IngestArgs,
    },
}

/// What `ctctl ingest` wrote: the report.
#[derive(Clone, Debug, Serialize)]
pub struct IngestReport {
    /// `ctcluster.ingest-report.v1`.
    pub format: &'static str,
    /// The source kind.
    pub kind: &'static str,
    /// The source.
    pub source: String,
    /// The dataset written.
    pub out: String,
    /// Items the source offered.
    pub scanned: usize,
    /// Items written, per split.
    pub written: BTreeMap<String, u64>,
    /// Items left out, per reason.
    pub dropped_by_reason: BTreeMap<Reason, usize>,
    /// Every item left out.
    pub dropped: Vec<Dropped>,
    /// Every item written after a change.
    pub modified: Vec<Modified>,
}

/// The split of a group, by a hash of (seed, group): the same group always lands in the same
/// split.
pub fn split_for(group: &str, seed: u64, val: f64, test: f64) -> &'static str {
    let u = (derive(&[seed, 0x5917, hash_str(group)]) >> 11) as f64 / (1u64 << 53) as f64;
    if u < test {
        "test"
    } else if u < test + val {
        "val"
    } else {
        "train"
    }
}

fn split_rank(split: &str) -> u8 {
    match split {
        "test" => 0,
        "val" => 1,
        "train" => 2,
        _ => 3,
    }
}

fn resolve(label: &RawLabel, classes: &[String]) -> Result<u32, (Reason, String)> {
    match label {
        RawLabel::Missing => Err((Reason::NoLabel, "no label given".into())),
        RawLabel::Index(i) if *i >= 0 && (*i as usize) < classes.len() => Ok(*i as u32),
        RawLabel::Index(i) => Err((
            Reason::UnknownLabel,
            format!("label {i} is outside 0..{}", classes.len()),
        )),
        RawLabel::Name(n) => classes
            .iter()
            .position(|c| c == n)
            .map(|i| i as u32)
            .ok_or_else(|| {
                (
                    Reason::UnknownLabel,
                    format!("label {n:?} is not a class ({})", classes.join(", ")),
                )
            }),
    }
}

/// Runs `ctctl ingest`; returns the terminal summary.
pub async fn ingest(source: IngestSource) -> Result<String, CtlError> {
    Ok(summary(&ingest_report(source).await?))
}

/// Runs `ctctl ingest`; returns the report.
pub async fn ingest_report(source: IngestSource) -> Result<IngestReport, CtlError> {
    let (plan, args) = match source {
        IngestSource::Npy {
            images,
            labels,
            args,
        } => (npy::npy_pair(&images, &labels)?, args),
        IngestSource::Npz { file, args } => (npy::npz(&file)?, args),
        IngestSource::Folder { dir, args } => (folder::folder(&dir)?, args),
        IngestSource::Dicom {
            dir,
            labels,
            deid_key,
            keep_identifiers,
            allow_burned_in,
            allow_secondary_capture,
            args,
        } => {
            let key = if keep_identifiers {
                None
            } else {
                Some(DeidKey::load(deid_key.as_deref())?)
            };
            let allow = dicom::Allow {
                burned_in: allow_burned_in,
                secondary_capture: allow_secondary_capture,
            };
            (dicom::dicom(&dir, &labels, key.as_ref(), allow)?, args)
        }
    };
    run(plan, &args).await
}

/// Splits, orders, decodes, cleans and writes a source's items; returns the report (also
/// written as `ingest-report.json` beside the shards).
pub async fn run(mut plan: Plan, args: &IngestArgs) -> Result<IngestReport, CtlError> {
    let out = StoreUrl::parse(&args.out)?;
    if !(0.0..=1.0).contains(&args.val_fraction)
        || !(0.0..=1.0).contains(&args.test_fraction)
        || args.val_fraction + args.test_fraction >= 1.0
    {
        return Err(CtlError::Usage(
            "--val-fraction and --test-fraction must be >= 0 and leave some data for train".into(),
        ));
    }
    if let Some(names) = &args.classes {
        plan.classes = names.clone();
    }
    if plan.classes.len() < 2 {
        return Err(CtlError::Usage(format!(
            "{}: {} class(es) found ({}); a classifier needs at least 2 (--classes names them)",
            plan.source,
            plan.classes.len(),
            plan.classes.join(", ")
        )));
    }
    let key = match &args.encrypt_key {
        Some(id) => Some(DataKey::from_env(id, &format!("dataset {}", out.as_str()))?),
        None => None,
    };
    let scanned = plan.candidates.len() + plan.dropped.len();
    plan.item_refs = item_refs(&plan);
    let mut items: Vec<(String, Candidate)> = plan
        .candidates
        .drain(..)
        .map(|c| {
            let split = c.split.clone().unwrap_or_else(|| {
                split_for(
                    &c.group,
                    args.split_seed,
                    args.val_fraction,
                    args.test_fraction,
                )
                .into()
            });
            (split, c)
        })
        .collect();
    // Held-out splits first, so that a duplicate across splits is kept in test and left out
    // of train.
    items.sort_by_key(|(split, _)| split_rank(split));

    let target = args.size.map(|(height, width)| Target {
        height,
        width,
        channels: 0,
        pixel_type: ctcluster_common::dataset::PixelType::U8,
    });
    let mut cleaner = Cleaner::new(None, args.on_shape);
    cleaner.dropped = std::mem::take(&mut plan.dropped);
    let mut writer: Option<DatasetWriter> = None;
    let mut written: BTreeMap<String, u64> = BTreeMap::new();
    let bar = progress(items.len() as u64, &plan.source);
    for (split, c) in items {
        bar.inc(1);
        let label = match resolve(&c.label, &plan.classes) {
            Ok(l) => l,
            Err((reason, detail)) => {
                cleaner.drop_item(&c.source, reason, detail);
                continue;
            }
        };
        let load = c.load;
        let decoded = tokio::task::spawn_blocking(move || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(load)).unwrap_or_else(|_| {
                Err((Reason::Unreadable, "the decoder failed on this file".into()))
            })
        })
        .await
        .map_err(|e| CtlError::Usage(format!("decoding stopped: {e}")))?;
        let img = match decoded {
            Ok(img) => img,
            Err((reason, detail)) => {
                cleaner.drop_item(&c.source, reason, detail);
                continue;
            }
        };
        if cleaner.target.is_none()
            && let Some(t) = target
        {
            // --size fixes the shape; channels and type come from the first good image.
            cleaner.target = Some(Target {
                channels: img.channels,
                pixel_type: img.pixel_type,
                ..t
            });
        }
        let Some(bytes) = cleaner.accept(&c.source, &split, img) else {
            continue;
        };
        let w = match &mut writer {
            Some(w) => w,
            None => {
                let t = cleaner.target.expect("set by the first accepted image");
                let image = ImageInfo {
                    height: t.height,
                    width: t.width,
                    channels: t.channels,
                    pixel_type: t.pixel_type,
                };
                // The manifest names the kind of source, never its path (folder and file
                // names often carry patient names or record numbers).
                let mut w = DatasetWriter::new(
                    out.clone(),
                    image,
                    plan.classes.clone(),
                    args.shard_rows,
                    format!("ctctl ingest {}", plan.kind),
                )?;
                if let Some(k) = key.clone() {
                    w = w.encrypt_with(k);
                }
                if let Some(d) = plan.deidentification.clone() {
                    w = w.deidentified(d);
                }
                writer.insert(w)
            }
        };
        let id = if plan.ids_from_pixels {
            pixel_id(&bytes)
        } else {
            c.id
        };
        w.add(&split, id, label, bytes).await?;
        *written.entry(split).or_default() += 1;
    }
    bar.finish_and_clear();
    let report = IngestReport {
        format: "ctcluster.ingest-report.v1",
        kind: plan.kind,
        source: plan.source.clone(),
        out: out.as_str().to_string(),
        scanned,
        written,
        dropped_by_reason: cleaner.counts(),
        dropped: cleaner.dropped,
        modified: cleaner.modified,
    };
    let Some(writer) = writer else {
        return Err(CtlError::Usage(format!(
            "{}: no usable image among {scanned} items\n{}",
            plan.source,
            summary(&report)
        )));
    };
    if !report.written.contains_key("train") {
        return Err(CtlError::Usage(format!(
            "{}: nothing landed in the train split\n{}",
            plan.source,
            summary(&report)
        )));
    }
    // Beside the shards, and sealed like them: the sidecars and the report, which names
    // items by their place in the listing, never by path.
    for (name, bytes) in plan.sidecars {
        out.join(&name)?
            .put(writer.seal_extra(&name, bytes)?)
            .await?;
    }
    let json =
        serde_json::to_vec_pretty(&stored_report(&report, &plan.item_refs)).unwrap_or_default();
    out.join(REPORT_FILE)?
        .put(writer.seal_extra(REPORT_FILE, json)?)
        .await?;
    // The manifest last: a reader never sees a half-written dataset.
    writer.finish().await?;
    debug_assert!(out.join(MANIFEST_FILE).is_ok());
    Ok(report)
}

/// A sample id from an image's pixels (sha256, 16 hex digits): stable for the same image,
/// and telling nothing of the file it came from. Exact duplicates, which would share it, are
/// left out by the cleaning before they are written.
fn pixel_id(pixels: &[u8]) -> String {
    format!("img-{}", &ctcluster_common::checkpoint::sha(pixels)[..16])
}

/// Every item a source listed (kept or not), with the reference the stored report uses for
/// it: `item-NNNNNN`, its place in the source's sorted listing.
fn item_refs(plan: &Plan) -> Vec<(String, String)> {
    let mut sources: Vec<&str> = plan
        .candidates
        .iter()
        .map(|c| c.source.as_str())
        .chain(plan.dropped.iter().map(|d| d.source.as_str()))
        .collect();
    sources.sort_unstable();
    sources.dedup();
    let mut refs: Vec<(String, String)> = sources
        .iter()
        .enumerate()
        .map(|(i, s)| (s.to_string(), format!("item-{i:06}")))
        .collect();
    // Longest first, so that replacing one path never touches a longer one containing it.
    refs.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
    refs
}

/// The report as stored beside the shards: the source named by its kind, each item by its
/// reference, and every path in a detail replaced by its item's reference.
fn stored_report(r: &IngestReport, refs: &[(String, String)]) -> IngestReport {
    let redact = |text: &str| {
        let mut out = text.to_string();
        for (source, reference) in refs {
            if out.contains(source.as_str()) {
                out = out.replace(source.as_str(), reference);
            }
        }
        out
    };
    IngestReport {
        source: r.kind.to_string(),
        dropped: r
            .dropped
            .iter()
            .map(|d| Dropped {
                source: redact(&d.source),
                reason: d.reason,
                detail: redact(&d.detail),
            })
            .collect(),
        modified: r
            .modified
            .iter()
            .map(|m| Modified {
                source: redact(&m.source),
                change: redact(&m.change),
            })
            .collect(),
        ..r.clone()
    }
}

fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} items, {per_sec}, eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(format!("ingesting {what}"));
    bar
}

/// The terminal summary: counts, and the first items left out with their reasons.
pub fn summary(r: &IngestReport) -> String {
    let total: u64 = r.written.values().sum();
    let splits: Vec<String> = r.written.iter().map(|(s, n)| format!("{s} {n}")).collect();
    let mut out = format!(
        "ingested {total} of {} items from {} into {} ({})\n",
        r.scanned,
        safe(&r.source),
        safe(&r.out),
        splits.join(", ")
    );
    if r.dropped.is_empty() {
        out.push_str("dropped  none\n");
    } else {
        let counts: Vec<String> = r
            .dropped_by_reason
            .iter()
            .map(|(k, n)| {
                format!(
                    "{} {n}",
                    serde_json::to_value(k)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default()
                )
            })
            .collect();
        out.push_str(&format!(
            "dropped  {} ({})\n",
            r.dropped.len(),
            counts.join(", ")
        ));
        for d in r.dropped.iter().take(20) {
            out.push_str(&format!(
                "  {}: {:?}: {}\n",
                safe(&d.source),
                d.reason,
                safe(&d.detail)
            ));
        }
        if r.dropped.len() > 20 {
            out.push_str(&format!("  ... and {} more\n", r.dropped.len() - 20));
        }
    }
    if !r.modified.is_empty() {
        out.push_str(&format!(
            "modified {} (e.g. {}: {})\n",
            r.modified.len(),
            safe(&r.modified[0].source),
            safe(&r.modified[0].change)
        ));
    }
    out.push_str(&format!(
        "report   {}/{REPORT_FILE}\n",
        r.out.trim_end_matches('/')
    ));
    out
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: IngestArgs,
    }

    #[test]
    fn the_defaults_for_other_callers_are_the_command_line_s() {
        let parsed = Cli::parse_from(["ingest", "--out", "memory://d"]).args;
        assert_eq!(IngestArgs::to("memory://d"), parsed);
    }
}
