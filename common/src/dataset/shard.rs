//! The Arrow codec of one shard: columns `id` (utf8), `label` (int32) and `image` (binary, the
//! raw little-endian pixels of one image).

use std::io::Cursor;
use std::sync::Arc;

use arrow_array::{Array, BinaryArray, Int32Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use sha2::{Digest, Sha256};

use super::manifest::{ImageInfo, MAX_ID_BYTES, Manifest, ShardInfo};
use crate::seal::DataKey;
use crate::storage::StoreUrl;
use crate::{Error, Result};

/// The Arrow schema every shard has.
pub fn shard_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("label", DataType::Int32, false),
        Field::new("image", DataType::Binary, false),
    ]))
}

/// A shard's rows in memory.
#[derive(Clone, Debug)]
pub struct DecodedShard {
    /// Sample ids.
    pub ids: Vec<String>,
    /// Class indices.
    pub labels: Vec<u32>,
    /// Pixels of every image, converted to f32, image after image.
    pub pixels: Vec<f32>,
    /// Pixels per image.
    pub pixels_per_image: usize,
}

impl DecodedShard {
    /// The pixels of one row.
    pub fn image(&self, row: usize) -> &[f32] {
        &self.pixels[row * self.pixels_per_image..(row + 1) * self.pixels_per_image]
    }
}

/// Encodes rows as an Arrow IPC file.
pub fn encode_shard(ids: &[String], labels: &[i32], images: &[Vec<u8>]) -> Result<Vec<u8>> {
    let batch = RecordBatch::try_new(
        shard_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(ids)),
            Arc::new(Int32Array::from(labels.to_vec())),
            Arc::new(BinaryArray::from_iter_values(images)),
        ],
    )
    .map_err(|e| Error::Compute(format!("building a shard: {e}")))?;
    let mut buf = Vec::new();
    {
        let mut w = arrow_ipc::writer::FileWriter::try_new(&mut buf, &batch.schema())
            .map_err(|e| Error::Compute(format!("writing a shard: {e}")))?;
        w.write(&batch)
            .and_then(|()| w.finish())
            .map_err(|e| Error::Compute(format!("writing a shard: {e}")))?;
    }
    Ok(buf)
}

/// Decodes and checks a shard's bytes against its manifest entry; `location` names it in errors.
pub fn decode_shard(
    bytes: &[u8],
    info: &ShardInfo,
    image: &ImageInfo,
    classes: usize,
    location: &str,
) -> Result<DecodedShard> {
    check_sha256(bytes, info, location)?;
    decode_arrow(bytes, info, image, classes, location)
}

/// Checks the stored bytes against the manifest's sha256.
fn check_sha256(bytes: &[u8], info: &ShardInfo, location: &str) -> Result<()> {
    let digest = hex::encode(Sha256::digest(bytes));
    if digest != info.sha256 {
        return Err(Error::dataset(
            location,
            format!(
                "sha256 mismatch (manifest {}, file {digest}): the shard is corrupt or was replaced",
                info.sha256
            ),
        ));
    }
    Ok(())
}

/// Decodes verified Arrow bytes.
fn decode_arrow(
    bytes: &[u8],
    info: &ShardInfo,
    image: &ImageInfo,
    classes: usize,
    location: &str,
) -> Result<DecodedShard> {
    // arrow-ipc 60 trusts buffer offsets inside a file and panics on some malformed ones
    // (found by fuzzing): a bad file must be an error naming it, not a crashed worker.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        decode_arrow_unguarded(bytes, info, image, classes, location)
    }))
    .unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown reason".into());
        Err(Error::dataset(
            location,
            format!("malformed Arrow IPC file: {why}"),
        ))
    })
}

/// Checks that every block the file's footer lists lies inside the file: arrow-ipc allocates
/// what a block declares before reading it, so a forged footer could ask for terabytes (found
/// by fuzzing).
fn check_blocks(bytes: &[u8]) -> std::result::Result<(), String> {
    let n = bytes.len();
    // ... footer | footer length (i32 LE) | "ARROW1"
    if n < 6 + 2 + 4 + 6 || !bytes.ends_with(b"ARROW1") {
        return Err("no Arrow IPC file trailer".into());
    }
    let len_at = n - 10;
    let footer_len = i32::from_le_bytes([
        bytes[len_at],
        bytes[len_at + 1],
        bytes[len_at + 2],
        bytes[len_at + 3],
    ]);
    let footer_len = usize::try_from(footer_len)
        .ok()
        .filter(|l| *l <= len_at)
        .ok_or_else(|| format!("footer length {footer_len} does not fit the file"))?;
    let footer = arrow_ipc::root_as_footer(&bytes[len_at - footer_len..len_at])
        .map_err(|e| format!("unreadable footer: {e}"))?;
    let blocks = footer
        .recordBatches()
        .into_iter()
        .flatten()
        .chain(footer.dictionaries().into_iter().flatten());
    for b in blocks {
        let (offset, meta, body) = (b.offset(), b.metaDataLength(), b.bodyLength());
        let end = i128::from(offset) + i128::from(meta) + i128::from(body);
        if offset < 0 || meta < 0 || body < 0 || end > n as i128 {
            return Err(format!(
                "a block claims bytes {offset}..{end} of a {n}-byte file"
            ));
        }
    }
    Ok(())
}

fn decode_arrow_unguarded(
    bytes: &[u8],
    info: &ShardInfo,
    image: &ImageInfo,
    classes: usize,
    location: &str,
) -> Result<DecodedShard> {
    let bad = |reason: String| Error::dataset(location, reason);
    check_blocks(bytes).map_err(|e| bad(format!("malformed Arrow IPC file: {e}")))?;
    let reader = arrow_ipc::reader::FileReader::try_new(Cursor::new(bytes), None)
        .map_err(|e| bad(format!("not an Arrow IPC file: {e}")))?;
    let schema = reader.schema();
    for field in shard_schema().fields() {
        match schema.field_with_name(field.name()) {
            Ok(f) if f.data_type() == field.data_type() => {}
            Ok(f) => {
                return Err(bad(format!(
                    "column {} is {}, expected {}",
                    field.name(),
                    f.data_type(),
                    field.data_type()
                )));
            }
            Err(_) => return Err(bad(format!("no column {:?}", field.name()))),
        }
    }
    let expect_rows = usize::try_from(info.rows).map_err(|_| bad("row count too large".into()))?;
    let per_image = image.pixels();
    // Capacity from what the file can hold, never from the manifest's word alone.
    let fits = (bytes.len() / image.bytes().max(1)).min(expect_rows);
    let mut out = DecodedShard {
        ids: Vec::with_capacity(fits),
        labels: Vec::with_capacity(fits),
        pixels: Vec::with_capacity(fits.saturating_mul(per_image)),
        pixels_per_image: per_image,
    };
    for batch in reader {
        let batch = batch.map_err(|e| bad(format!("unreadable record batch: {e}")))?;
        let col = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| bad(format!("no column {name:?}")))
        };
        let ids = col("id")?
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| bad("id is not utf8".into()))?;
        let labels = col("label")?
            .as_any()
            .downcast_ref::<Int32Array>()
            .ok_or_else(|| bad("label is not int32".into()))?;
        let images = col("image")?
            .as_any()
            .downcast_ref::<BinaryArray>()
            .ok_or_else(|| bad("image is not binary".into()))?;
        for i in 0..batch.num_rows() {
            let row = out.ids.len();
            if row >= expect_rows {
                return Err(bad(format!(
                    "more rows than the {expect_rows} the manifest says"
                )));
            }
            if ids.is_null(i) || labels.is_null(i) || images.is_null(i) {
                return Err(bad(format!("row {row}: null value")));
            }
            let label = labels.value(i);
            let label = u32::try_from(label)
                .ok()
                .filter(|l| (*l as usize) < classes)
                .ok_or_else(|| bad(format!("row {row}: label {label} is outside 0..{classes}")))?;
            let px = images.value(i);
            if px.len() != image.bytes() {
                return Err(bad(format!(
                    "row {row}: image has {} bytes, expected {} ({}x{}x{} {:?})",
                    px.len(),
                    image.bytes(),
                    image.height,
                    image.width,
                    image.channels,
                    image.pixel_type
                )));
            }
            let before = out.pixels.len();
            image.pixel_type.extend_f32(px, &mut out.pixels);
            if out.pixels[before..].iter().any(|v| !v.is_finite()) {
                return Err(bad(format!("row {row}: NaN or infinite pixel")));
            }
            let id = ids.value(i);
            if id.len() > MAX_ID_BYTES {
                return Err(bad(format!(
                    "row {row}: id of {} bytes (at most {MAX_ID_BYTES})",
                    id.len()
                )));
            }
            out.ids.push(id.to_string());
            out.labels.push(label);
        }
    }
    if out.ids.len() != expect_rows {
        return Err(bad(format!(
            "{} rows, but the manifest says {expect_rows}",
            out.ids.len()
        )));
    }
    Ok(out)
}

/// Fetches and decodes one shard of a split.
pub async fn load_shard(
    dataset: &StoreUrl,
    manifest: &Manifest,
    split: &str,
    shard: usize,
) -> Result<DecodedShard> {
    let info = manifest
        .split(split, dataset.as_str())?
        .shards
        .get(shard)
        .ok_or_else(|| {
            Error::dataset(
                dataset.as_str(),
                format!("split {split} has no shard {shard}"),
            )
        })?;
    let url = dataset.join(&info.file)?;
    let (_, most) = info.size_bounds(&manifest.image);
    let bytes = url.get_bounded(most, "a shard of this many rows").await?;
    let image = manifest.image;
    let classes = manifest.classes.len();
    let info = info.clone();
    let location = url.as_str().to_string();
    let key = match &manifest.encryption {
        Some(e) => Some((
            DataKey::from_env(&e.key_id, &format!("dataset {}", dataset.as_str()))?,
            e.aad(&info.file),
        )),
        None => None,
    };
    // Hashing, decrypting and decoding is CPU work: keep it off the async threads.
    tokio::task::spawn_blocking(move || match key {
        None => decode_shard(&bytes, &info, &image, classes, &location),
        Some((key, aad)) => {
            check_sha256(&bytes, &info, &location)?;
            let plain = key.open(&aad, &bytes, &location)?;
            decode_arrow(&plain, &info, &image, classes, &location)
        }
    })
    .await
    .map_err(|e| Error::Compute(format!("shard decoder panicked: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::PixelType;

    #[test]
    fn a_shard_with_a_bad_buffer_offset_is_an_error_not_a_panic() {
        // Found by the `shard` fuzz target: arrow-ipc panics slicing a buffer at an offset
        // past the end of the file.
        let bytes = include_bytes!("testdata/arrow-bad-buffer-offset.arrow");
        let info = ShardInfo {
            file: "train-00000.arrow".into(),
            rows: 8,
            sha256: hex::encode(Sha256::digest(bytes)),
            per_class: vec![0; 2],
        };
        let image = ImageInfo {
            height: 8,
            width: 8,
            channels: 1,
            pixel_type: PixelType::U8,
        };
        let e = decode_shard(bytes, &info, &image, 2, "memory://d/train-00000.arrow")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("train-00000.arrow") && e.contains("malformed Arrow IPC"),
            "{e}"
        );
    }

    #[test]
    fn a_footer_declaring_a_huge_block_is_an_error_not_an_allocation() {
        // Found by the `shard` fuzz target: a block of 2^49 bytes in the footer made
        // arrow-ipc try to allocate it.
        let bytes = include_bytes!("testdata/arrow-huge-block.arrow");
        let info = ShardInfo {
            file: "train-00000.arrow".into(),
            rows: 8,
            sha256: hex::encode(Sha256::digest(bytes)),
            per_class: vec![0; 2],
        };
        let image = ImageInfo {
            height: 8,
            width: 8,
            channels: 1,
            pixel_type: PixelType::U8,
        };
        let e = decode_shard(bytes, &info, &image, 2, "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("malformed Arrow IPC"), "{e}");
    }

    #[test]
    fn a_manifest_claiming_a_trillion_rows_allocates_nothing_for_them() {
        let images = vec![vec![7u8; 64]; 3];
        let ids: Vec<String> = (0..3).map(|i| format!("r{i}")).collect();
        let bytes = encode_shard(&ids, &[0, 1, 0], &images).unwrap();
        let info = ShardInfo {
            file: "train-00000.arrow".into(),
            rows: 1_000_000_000_000,
            sha256: hex::encode(Sha256::digest(&bytes)),
            per_class: vec![0; 2],
        };
        let image = ImageInfo {
            height: 8,
            width: 8,
            channels: 1,
            pixel_type: PixelType::U8,
        };
        let e = decode_shard(&bytes, &info, &image, 2, "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("3 rows"), "{e}");
    }
}
