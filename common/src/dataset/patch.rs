//! A generated dataset whose evidence is known, for testing explanations: grey texture (a few
//! random low-frequency waves plus pixel noise) with one square patch at a random place, brighter
//! (class `bright`) or darker (class `dark`) than what is around it. The patch alone decides
//! the class, and [`patch_sample`] returns its mask.

use super::manifest::{Manifest, PixelType};
use super::synth::{SynthOptions, square_writer};
use crate::Result;
use crate::rng::{KeyedRng, derive};
use crate::seal::DataKey;
use crate::storage::StoreUrl;

/// Class names, by label.
pub const PATCH_CLASSES: [&str; 2] = ["dark", "bright"];

/// One generated image.
#[derive(Clone, Debug, PartialEq)]
pub struct PatchSample {
    /// 0 (dark patch) or 1 (bright patch).
    pub label: u32,
    /// Row-major 8-bit pixels, `size x size`.
    pub pixels: Vec<u8>,
    /// Whether each pixel is in the patch.
    pub mask: Vec<bool>,
}

/// The patch's side for images of `size`: a fifth of it, at least 3 pixels.
pub fn patch_side(size: u32) -> u32 {
    (size as f32 / 5.0).round().max(3.0) as u32
}

/// Image `index` of split `split` (`train` 1, `test` 2) generated from `seed`.
pub fn patch_sample(size: u32, seed: u64, split: u64, index: usize) -> PatchSample {
    let mut rng = KeyedRng::new(derive(&[seed, 0x7a7c, split, index as u64]));
    let label = (rng.next_u64() % 2) as u32;
    let side = patch_side(size);
    let (px, py) = (
        rng.below((size - side + 1) as usize) as u32,
        rng.below((size - side + 1) as usize) as u32,
    );
    let waves: Vec<[f32; 4]> = (0..3)
        .map(|_| {
            [
                (rng.next_f32() - 0.5) * 0.6,
                (rng.next_f32() - 0.5) * 0.6,
                rng.next_f32() * std::f32::consts::TAU,
                5.0 + rng.next_f32() * 7.0,
            ]
        })
        .collect();
    let mut pixels = Vec::with_capacity((size * size) as usize);
    let mut mask = Vec::with_capacity((size * size) as usize);
    for y in 0..size {
        for x in 0..size {
            let (fx, fy) = (x as f32, y as f32);
            let mut v = 128.0;
            for [kx, ky, phase, amp] in &waves {
                v += amp * (kx * fx + ky * fy + phase).sin();
            }
            v += (rng.next_f32() - 0.5) * 30.0;
            let inside = (px..px + side).contains(&x) && (py..py + side).contains(&y);
            if inside {
                v += if label == 1 { 70.0 } else { -70.0 };
            }
            pixels.push(v.round().clamp(0.0, 255.0) as u8);
            mask.push(inside);
        }
    }
    PatchSample {
        label,
        pixels,
        mask,
    }
}

/// Writes the generated dataset (splits `train` and `test`, classes `dark` and `bright`),
/// sealing the shards with `key` when given.
pub async fn write_patches(
    out: &StoreUrl,
    opts: SynthOptions,
    key: Option<DataKey>,
) -> Result<Manifest> {
    let classes = PATCH_CLASSES.iter().map(|c| c.to_string()).collect();
    let mut w = square_writer(
        out,
        opts.size,
        PixelType::U8,
        classes,
        "generated bright or dark patches",
        key,
    )?;
    for (split, n, key) in [("train", opts.train, 1u64), ("test", opts.test, 2)] {
        for i in 0..n {
            let s = patch_sample(opts.size, opts.seed, key, i);
            w.add(split, format!("{split}-{i:06}"), s.label, s.pixels)
                .await?;
        }
    }
    w.finish().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patch_is_where_the_mask_says_and_decides_the_class() {
        for i in 0..50 {
            let s = patch_sample(28, 3, 1, i);
            let side = patch_side(28) as usize;
            assert_eq!(s.mask.iter().filter(|&&m| m).count(), side * side);
            let mean = |inside: bool| {
                let v: Vec<f32> = s
                    .pixels
                    .iter()
                    .zip(&s.mask)
                    .filter(|(_, m)| **m == inside)
                    .map(|(p, _)| f32::from(*p))
                    .collect();
                v.iter().sum::<f32>() / v.len() as f32
            };
            if s.label == 1 {
                assert!(mean(true) > mean(false) + 40.0, "image {i}");
            } else {
                assert!(mean(true) < mean(false) - 40.0, "image {i}");
            }
            assert_eq!(s, patch_sample(28, 3, 1, i));
        }
        assert_ne!(patch_sample(28, 3, 1, 0), patch_sample(28, 3, 2, 0));
    }
}
