//! A synthetic head-CT phantom in Hounsfield units: air, skull, grey and white matter,
//! ventricles and noise, in three classes: `normal`, `haemorrhage` (a hyper-dense blob, fresh
//! blood at 60-80 HU) and `ischaemia` (a hypo-dense region, oedematous tissue at 12-20 HU).
//! Stored as i16, so the brain window (40/80) shows it as a radiologist would.

use super::manifest::{Manifest, PixelType};
use crate::Result;
use crate::rng::{KeyedRng, derive};
use crate::seal::DataKey;
use crate::storage::StoreUrl;

/// The phantom's classes, in label order.
pub const HEAD_CT_CLASSES: [&str; 3] = ["normal", "haemorrhage", "ischaemia"];

/// What to generate.
#[derive(Clone, Copy, Debug)]
pub struct HeadCtOptions {
    /// Training slices.
    pub train: usize,
    /// Test slices.
    pub test: usize,
    /// Side of the square slices, in pixels.
    pub size: u32,
    /// Seed for the generator.
    pub seed: u64,
}

impl Default for HeadCtOptions {
    fn default() -> Self {
        HeadCtOptions {
            train: 1536,
            test: 256,
            size: 48,
            seed: 7,
        }
    }
}

/// Roughly normal noise with standard deviation 1 (sum of four uniforms).
fn gauss(rng: &mut KeyedRng) -> f32 {
    let s: f32 = (0..4).map(|_| rng.next_f32()).sum();
    (s - 2.0) / 0.577_35
}

struct Blob {
    x: f32,
    y: f32,
    r: f32,
    phase: f32,
    hu: f32,
}

impl Blob {
    fn contains(&self, x: f32, y: f32) -> bool {
        let (dx, dy) = (x - self.x, y - self.y);
        let theta = dy.atan2(dx);
        let r = self.r * (1.0 + 0.2 * (3.0 * theta + self.phase).sin());
        dx * dx + dy * dy <= r * r
    }
}

/// One slice of class `label` (0 normal, 1 haemorrhage, 2 ischaemia), Hounsfield units.
pub fn render_head_ct(size: u32, label: u32, rng: &mut KeyedRng) -> Vec<i16> {
    let s = size as f32;
    let jitter = |rng: &mut KeyedRng, amount: f32| (rng.next_f32() - 0.5) * 2.0 * amount;
    let (cx, cy) = (
        s / 2.0 + jitter(rng, 0.03 * s),
        s / 2.0 + jitter(rng, 0.03 * s),
    );
    let (ax, ay) = (
        s * (0.36 + jitter(rng, 0.03)),
        s * (0.43 + jitter(rng, 0.03)),
    );
    let tilt = jitter(rng, 0.2);
    let (sin, cos) = tilt.sin_cos();
    let skull = s * 0.05;
    let bone_hu = 700.0 + rng.next_f32() * 500.0;
    let (grey, white) = (36.0 + jitter(rng, 3.0), 26.0 + jitter(rng, 3.0));
    // Head-frame coordinates: u across, v along the long axis.
    let frame = |x: f32, y: f32| {
        let (dx, dy) = (x - cx, y - cy);
        (cos * dx + sin * dy, -sin * dx + cos * dy)
    };
    let lesion = match label {
        1 | 2 => {
            let angle = rng.next_f32() * std::f32::consts::TAU;
            let dist = 0.15 + rng.next_f32() * 0.45;
            let (u, v) = (
                angle.cos() * (ax - skull) * dist,
                angle.sin() * (ay - skull) * dist,
            );
            let (r, hu) = if label == 1 {
                (
                    s * (0.05 + rng.next_f32() * 0.05),
                    62.0 + rng.next_f32() * 18.0,
                )
            } else {
                (
                    s * (0.11 + rng.next_f32() * 0.07),
                    6.0 + rng.next_f32() * 8.0,
                )
            };
            Some(Blob {
                x: u,
                y: v,
                r,
                phase: rng.next_f32() * std::f32::consts::TAU,
                hu,
            })
        }
        _ => None,
    };
    let mut out = Vec::with_capacity((size * size) as usize);
    for y in 0..size {
        for x in 0..size {
            let (u, v) = frame(x as f32 + 0.5, y as f32 + 0.5);
            let outer = (u / ax).powi(2) + (v / ay).powi(2);
            let inner = (u / (ax - skull)).powi(2) + (v / (ay - skull)).powi(2);
            let hu = if outer > 1.0 {
                -1000.0 + 8.0 * gauss(rng)
            } else if inner > 1.0 {
                bone_hu + 40.0 * gauss(rng)
            } else {
                let deep = (u / (ax * 0.6)).powi(2) + (v / (ay * 0.6)).powi(2) <= 1.0;
                let ventricle = [-1.0f32, 1.0].iter().any(|side| {
                    ((u - side * s * 0.06) / (s * 0.035)).powi(2)
                        + ((v + s * 0.02) / (s * 0.1)).powi(2)
                        <= 1.0
                });
                let base = if ventricle {
                    5.0
                } else if deep {
                    white
                } else {
                    grey
                };
                let base = match &lesion {
                    Some(b) if b.contains(u, v) && !ventricle => b.hu,
                    _ => base,
                };
                base + 4.0 * gauss(rng)
            };
            out.push(hu.round().clamp(-1024.0, 3071.0) as i16);
        }
    }
    out
}

/// Writes the phantom dataset (splits `train` and `test`, classes [`HEAD_CT_CLASSES`], pixels
/// i16 Hounsfield units), sealing the shards with `key` when given.
pub async fn write_head_ct(
    out: &StoreUrl,
    opts: HeadCtOptions,
    key: Option<DataKey>,
) -> Result<Manifest> {
    let classes = HEAD_CT_CLASSES.iter().map(|c| c.to_string()).collect();
    let mut w = super::synth::square_writer(
        out,
        opts.size,
        PixelType::I16,
        classes,
        "synthetic head-CT phantom",
        key,
    )?;
    for (split, n, key) in [("train", opts.train, 11u64), ("test", opts.test, 12)] {
        for i in 0..n {
            let mut rng = KeyedRng::new(derive(&[opts.seed, key, i as u64]));
            let label = (rng.next_u64() % 3) as u32;
            let pixels: Vec<u8> = render_head_ct(opts.size, label, &mut rng)
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            w.add(split, format!("{split}-{i:06}"), label, pixels)
                .await?;
        }
    }
    w.finish().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean_where(img: &[i16], keep: impl Fn(i16) -> bool) -> f32 {
        let v: Vec<f32> = img
            .iter()
            .filter(|&&p| keep(p))
            .map(|&p| f32::from(p))
            .collect();
        v.iter().sum::<f32>() / v.len().max(1) as f32
    }

    #[test]
    fn tissues_have_their_hounsfield_values() {
        let mut rng = KeyedRng::new(1);
        let img = render_head_ct(64, 0, &mut rng);
        let air = img.iter().filter(|&&v| v < -900).count();
        let bone = img.iter().filter(|&&v| v > 500).count();
        assert!(air > 64 * 64 / 5, "air around the head: {air}");
        assert!(bone > 100, "a skull: {bone}");
        let brain = mean_where(&img, |v| (-100..200).contains(&v));
        assert!((20.0..40.0).contains(&brain), "brain mean {brain} HU");
    }

    #[test]
    fn lesions_change_the_brain_the_right_way() {
        let count = |label: u32, keep: fn(i16) -> bool| -> usize {
            (0..40)
                .map(|i| {
                    let mut rng = KeyedRng::new(derive(&[5, i]));
                    render_head_ct(64, label, &mut rng)
                        .iter()
                        .filter(|&&v| keep(v))
                        .count()
                })
                .sum()
        };
        let dense = |v: i16| (55..100).contains(&v);
        let dark = |v: i16| (8..20).contains(&v);
        assert!(
            count(1, dense) > 3 * count(0, dense),
            "haemorrhage is hyper-dense"
        );
        assert!(
            count(2, dark) > 2 * count(0, dark),
            "ischaemia is hypo-dense"
        );
    }
}
