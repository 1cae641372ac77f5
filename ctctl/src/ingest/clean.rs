//! The cleaning rules: every source item is written or reported with its reason, never dropped
//! silently.

use std::collections::{BTreeMap, HashMap};

use ctcluster_common::dataset::PixelType;
use serde::Serialize;

use super::image::{Decoded, type_name};

/// Why an item did not reach the shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The file cannot be read or decoded (corrupt, truncated, unsupported).
    Unreadable,
    /// A DICOM object without pixel data (a report, a presentation state...).
    NoPixelData,
    /// A multi-frame DICOM object (cine, volume): not a single slice.
    MultiFrame,
    /// NaN or infinite values.
    NonFinite,
    /// Every pixel has the same value.
    Blank,
    /// No label given for the item.
    NoLabel,
    /// The label is not one of the classes.
    UnknownLabel,
    /// Values do not fit the dataset's pixel type.
    PixelType,
    /// Another shape, and `--on-shape drop`.
    Shape,
    /// The same pixels as an earlier item of the same split.
    Duplicate,
    /// The same pixels as an item of another split (leakage between splits).
    CrossSplitDuplicate,
    /// A DICOM image flagged with burned-in annotation (text such as names or dates drawn into
    /// the pixels, which de-identifying the header cannot remove); `--allow-burned-in` keeps it.
    BurnedInAnnotation,
    /// A DICOM secondary-capture object (a screenshot or scanned document, often with
    /// identifying text in its pixels); `--allow-secondary-capture` keeps it.
    SecondaryCapture,
}

/// One item left out.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Dropped {
    /// Where it came from (a path, or `file.npy[index]`).
    pub source: String,
    /// Why.
    pub reason: Reason,
    /// The details.
    pub detail: String,
}

/// One item written after a change.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Modified {
    /// Where it came from.
    pub source: String,
    /// What was done.
    pub change: String,
}

/// What to do with an image of another shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnShape {
    /// Resize it to the dataset's shape (listed as modified in the report).
    Resize,
    /// Leave it out (listed as dropped).
    Drop,
}

/// The shape and type every written image has.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Target {
    /// Rows.
    pub height: u32,
    /// Columns.
    pub width: u32,
    /// Channels.
    pub channels: u32,
    /// Stored type.
    pub pixel_type: PixelType,
}

/// Applies the rules item by item and remembers what it saw.
pub struct Cleaner {
    /// The dataset's shape and type, fixed by options or by the first good image.
    pub target: Option<Target>,
    on_shape: OnShape,
    seen: HashMap<[u8; 32], (String, String)>,
    /// Items left out.
    pub dropped: Vec<Dropped>,
    /// Items changed.
    pub modified: Vec<Modified>,
}

impl Cleaner {
    /// A cleaner; `target` fixes the shape (else the first good image does).
    pub fn new(target: Option<Target>, on_shape: OnShape) -> Self {
        Cleaner {
            target,
            on_shape,
            seen: HashMap::new(),
            dropped: Vec::new(),
            modified: Vec::new(),
        }
    }

    /// Records an item left out before its pixels were judged.
    pub fn drop_item(&mut self, source: &str, reason: Reason, detail: impl Into<String>) {
        self.dropped.push(Dropped {
            source: source.to_string(),
            reason,
            detail: detail.into(),
        });
    }

    /// Judges one decoded image of `split`: the pixel bytes to write, or `None` when it was
    /// dropped (and recorded).
    pub fn accept(&mut self, source: &str, split: &str, mut img: Decoded) -> Option<Vec<u8>> {
        let bad = img.non_finite();
        if bad > 0 {
            self.drop_item(
                source,
                Reason::NonFinite,
                format!("{bad} NaN or infinite values"),
            );
            return None;
        }
        if let Some(v) = img.constant() {
            self.drop_item(source, Reason::Blank, format!("every pixel is {v}"));
            return None;
        }
        let target = *self.target.get_or_insert(Target {
            height: img.height,
            width: img.width,
            channels: img.channels,
            pixel_type: img.pixel_type,
        });
        if img.channels != target.channels {
            let from = img.channels;
            img.to_channels(target.channels);
            if img.channels != target.channels {
                self.drop_item(
                    source,
                    Reason::Shape,
                    format!("{from} channels; the dataset has {}", target.channels),
                );
                return None;
            }
            self.modified.push(Modified {
                source: source.to_string(),
                change: format!("{from} channels converted to {}", target.channels),
            });
        }
        if !img.fits(target.pixel_type) {
            self.drop_item(
                source,
                Reason::PixelType,
                format!(
                    "{} values outside the dataset's {} range",
                    type_name(img.pixel_type),
                    type_name(target.pixel_type)
                ),
            );
            return None;
        }
        let hash = img.content_hash();
        if let Some((first, first_split)) = self.seen.get(&hash) {
            let (reason, detail) = if first_split == split {
                (Reason::Duplicate, format!("same pixels as {first}"))
            } else {
                (
                    Reason::CrossSplitDuplicate,
                    format!(
                        "same pixels as {first} in split {first_split}: kept there, left out of {split}"
                    ),
                )
            };
            self.drop_item(source, reason, detail);
            return None;
        }
        self.seen
            .insert(hash, (source.to_string(), split.to_string()));
        if (img.height, img.width) != (target.height, target.width) {
            let from = format!("{}x{}", img.height, img.width);
            match self.on_shape {
                OnShape::Drop => {
                    self.drop_item(
                        source,
                        Reason::Shape,
                        format!(
                            "{from}; the dataset is {}x{} (--on-shape resize would resize it)",
                            target.height, target.width
                        ),
                    );
                    return None;
                }
                OnShape::Resize => {
                    img.resize(target.height, target.width);
                    self.modified.push(Modified {
                        source: source.to_string(),
                        change: format!("resized {from} -> {}x{}", target.height, target.width),
                    });
                }
            }
        }
        Some(img.to_bytes(target.pixel_type))
    }

    /// Dropped items counted by reason.
    pub fn counts(&self) -> BTreeMap<Reason, usize> {
        let mut out = BTreeMap::new();
        for d in &self.dropped {
            *out.entry(d.reason).or_default() += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(values: Vec<f32>) -> Decoded {
        Decoded {
            height: 2,
            width: 2,
            channels: 1,
            pixel_type: PixelType::U8,
            values,
        }
    }

    #[test]
    fn each_rule_names_its_reason() {
        let mut c = Cleaner::new(None, OnShape::Drop);
        assert!(
            c.accept("a", "train", img(vec![1.0, 2.0, 3.0, 4.0]))
                .is_some()
        );
        assert!(
            c.accept("b", "train", img(vec![1.0, 2.0, 3.0, 4.0]))
                .is_none()
        );
        assert!(
            c.accept("c", "test", img(vec![1.0, 2.0, 3.0, 4.0]))
                .is_none()
        );
        assert!(c.accept("d", "train", img(vec![7.0; 4])).is_none());
        assert!(
            c.accept("e", "train", img(vec![f32::NAN, 1.0, 2.0, 3.0]))
                .is_none()
        );
        let big = Decoded {
            height: 1,
            width: 4,
            ..img(vec![9.0, 8.0, 7.0, 6.0])
        };
        assert!(c.accept("f", "train", big).is_none());
        let reasons: Vec<(String, Reason)> = c
            .dropped
            .iter()
            .map(|d| (d.source.clone(), d.reason))
            .collect();
        assert_eq!(
            reasons,
            vec![
                ("b".into(), Reason::Duplicate),
                ("c".into(), Reason::CrossSplitDuplicate),
                ("d".into(), Reason::Blank),
                ("e".into(), Reason::NonFinite),
                ("f".into(), Reason::Shape),
            ]
        );
    }

    #[test]
    fn other_shapes_are_resized_when_asked_and_listed() {
        let mut c = Cleaner::new(None, OnShape::Resize);
        c.accept("a", "train", img(vec![1.0, 2.0, 3.0, 4.0]))
            .unwrap();
        let big = Decoded {
            height: 4,
            width: 4,
            ..img((0..16).map(|v| v as f32).collect())
        };
        let bytes = c.accept("b", "train", big).unwrap();
        assert_eq!(bytes.len(), 4);
        assert_eq!(c.modified[0].change, "resized 4x4 -> 2x2");
    }
}
