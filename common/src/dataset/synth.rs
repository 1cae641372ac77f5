//! A small generated dataset for the demo and tests: grayscale "slices" (an elliptical organ in
//! noise), half of them with a bright round lesion. Learnable in a few epochs, made in milliseconds.

use super::manifest::{ImageInfo, Manifest, PixelType};
use super::writer::DatasetWriter;
use crate::Result;
use crate::rng::{KeyedRng, derive};
use crate::seal::DataKey;
use crate::storage::StoreUrl;

/// What to generate.
#[derive(Clone, Copy, Debug)]
pub struct SynthOptions {
    /// Training images.
    pub train: usize,
    /// Test images.
    pub test: usize,
    /// Side of the square images, in pixels.
    pub size: u32,
    /// Seed for the generator.
    pub seed: u64,
}

impl Default for SynthOptions {
    fn default() -> Self {
        SynthOptions {
            train: 1536,
            test: 256,
            size: 28,
            seed: 7,
        }
    }
}

fn render(size: u32, lesion: bool, rng: &mut KeyedRng) -> Vec<u8> {
    let s = size as f32;
    let (cx, cy) = (
        s / 2.0 + (rng.next_f32() - 0.5) * s * 0.1,
        s / 2.0 + (rng.next_f32() - 0.5) * s * 0.1,
    );
    let (ax, ay) = (
        s * (0.30 + rng.next_f32() * 0.1),
        s * (0.25 + rng.next_f32() * 0.1),
    );
    let organ = 90.0 + rng.next_f32() * 40.0;
    let (lx, ly, lr) = {
        let angle = rng.next_f32() * std::f32::consts::TAU;
        let dist = rng.next_f32() * 0.5;
        (
            cx + angle.cos() * ax * dist,
            cy + angle.sin() * ay * dist,
            s * (0.06 + rng.next_f32() * 0.05),
        )
    };
    let mut out = Vec::with_capacity((size * size) as usize);
    for y in 0..size {
        for x in 0..size {
            let (fx, fy) = (x as f32 + 0.5, y as f32 + 0.5);
            let inside = ((fx - cx) / ax).powi(2) + ((fy - cy) / ay).powi(2) <= 1.0;
            let mut v = if inside { organ } else { 15.0 };
            if lesion && ((fx - lx).powi(2) + (fy - ly).powi(2)).sqrt() <= lr {
                v += 80.0;
            }
            v += (rng.next_f32() - 0.5) * 50.0;
            out.push(v.clamp(0.0, 255.0) as u8);
        }
    }
    out
}

/// A writer for a generated dataset of square grey images (512 rows a shard), sealed with
/// `key` when given.
pub(super) fn square_writer(
    out: &StoreUrl,
    size: u32,
    pixel_type: PixelType,
    classes: Vec<String>,
    source: &str,
    key: Option<DataKey>,
) -> Result<DatasetWriter> {
    let image = ImageInfo {
        height: size,
        width: size,
        channels: 1,
        pixel_type,
    };
    let w = DatasetWriter::new(out.clone(), image, classes, 512, source)?;
    Ok(match key {
        Some(k) => w.encrypt_with(k),
        None => w,
    })
}

/// Writes the generated dataset (splits `train` and `test`, classes `normal` and `lesion`).
pub async fn write_synthetic(out: &StoreUrl, opts: SynthOptions) -> Result<Manifest> {
    write_synthetic_sealed(out, opts, None).await
}

/// [`write_synthetic`], sealing the shards with `key` when given.
pub async fn write_synthetic_sealed(
    out: &StoreUrl,
    opts: SynthOptions,
    key: Option<DataKey>,
) -> Result<Manifest> {
    let classes = vec!["normal".to_string(), "lesion".to_string()];
    let mut w = square_writer(
        out,
        opts.size,
        PixelType::U8,
        classes,
        "synthetic lesion phantom",
        key,
    )?;
    for (split, n, key) in [("train", opts.train, 1u64), ("test", opts.test, 2)] {
        for i in 0..n {
            let mut rng = KeyedRng::new(derive(&[opts.seed, key, i as u64]));
            let lesion = rng.next_u64() % 2 == 1;
            let pixels = render(opts.size, lesion, &mut rng);
            w.add(split, format!("{split}-{i:06}"), u32::from(lesion), pixels)
                .await?;
        }
    }
    w.finish().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{load_manifest, load_shard};

    #[tokio::test]
    async fn synthetic_dataset_round_trips_through_the_codec() {
        let out = StoreUrl::parse("memory://synth-test/ds").unwrap();
        let opts = SynthOptions {
            train: 600,
            test: 10,
            size: 16,
            seed: 1,
        };
        let written = write_synthetic(&out, opts).await.unwrap();
        let read = load_manifest(&out).await.unwrap();
        assert_eq!(written, read);
        assert_eq!(read.splits["train"].rows, 600);
        assert_eq!(read.splits["train"].shards.len(), 2);
        let both = read.splits["train"].per_class.clone();
        assert!(both[0] > 200 && both[1] > 200, "{both:?}");
        let shard = load_shard(&out, &read, "train", 1).await.unwrap();
        assert_eq!(shard.ids.len(), 88);
        assert_eq!(shard.ids[0], "train-000512");
        assert_eq!(shard.image(3).len(), 256);
        // Rewriting gives the same bytes: ingest is idempotent.
        let again = StoreUrl::parse("memory://synth-test/ds2").unwrap();
        assert_eq!(
            write_synthetic(&again, opts).await.unwrap().splits,
            written.splits
        );
    }
}
