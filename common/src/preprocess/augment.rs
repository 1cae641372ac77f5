//! Training augmentation: random shift (crop with padding), rotation, flips and intensity
//! jitter. Every draw comes from (seed, epoch, sample id), so a sample is augmented the same
//! way whichever worker takes it, and a resumed job repeats it exactly.

use serde::{Deserialize, Serialize};

use crate::rng::{KeyedRng, derive, hash_str};
use crate::{Error, Result};

/// Which augmentations a job applies to its training samples (all off by default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Augment {
    /// Random crop with this much padding, in pixels: the image moves by up to this many pixels
    /// in x and y; the uncovered border takes the image's lowest value (air, for CT).
    #[serde(default)]
    pub crop_padding: u32,
    /// Random rotation of up to this many degrees either way.
    #[serde(default)]
    pub rotation_degrees: f32,
    /// Mirror left-right with probability 1/2.
    #[serde(default)]
    pub hflip: bool,
    /// Mirror top-bottom with probability 1/2.
    #[serde(default)]
    pub vflip: bool,
    /// Contrast and brightness jitter: contrast x (1 +- j), brightness +- j x the image's
    /// value range.
    #[serde(default)]
    pub intensity: f32,
}

/// The random choices for one sample in one epoch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Draw {
    /// Shift in x, pixels.
    pub dx: f32,
    /// Shift in y, pixels.
    pub dy: f32,
    /// Rotation, radians.
    pub angle: f32,
    /// Mirrored left-right.
    pub hflip: bool,
    /// Mirrored top-bottom.
    pub vflip: bool,
    /// Contrast factor.
    pub contrast: f32,
    /// Brightness offset, as a fraction of the value range.
    pub brightness: f32,
}

impl Augment {
    /// Whether nothing is applied.
    pub fn is_off(&self) -> bool {
        *self == Augment::default()
    }

    /// Whether the image's geometry changes.
    pub fn moves_pixels(&self) -> bool {
        self.crop_padding > 0 || self.rotation_degrees != 0.0 || self.hflip || self.vflip
    }

    /// Checks the ranges.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, why: String| Err(Error::invalid(format!("augment.{field}"), why));
        if self.crop_padding > 64 {
            return bad(
                "crop_padding",
                format!("{} is not in 0..=64", self.crop_padding),
            );
        }
        if !(self.rotation_degrees.is_finite() && (0.0..=180.0).contains(&self.rotation_degrees)) {
            return bad(
                "rotation_degrees",
                format!("{} is not in [0, 180]", self.rotation_degrees),
            );
        }
        if !(self.intensity.is_finite() && (0.0..1.0).contains(&self.intensity)) {
            return bad("intensity", format!("{} is not in [0, 1)", self.intensity));
        }
        Ok(())
    }

    /// The draws for `sample_id` in `epoch` of a job seeded with `seed`. Every value is drawn
    /// whether or not its augmentation is on, so turning one on never changes another's draw.
    pub fn draw(&self, seed: u64, epoch: u32, sample_id: &str) -> Draw {
        let mut rng = KeyedRng::new(derive(&[
            seed,
            0xA06,
            u64::from(epoch),
            hash_str(sample_id),
        ]));
        let pad = self.crop_padding as usize;
        let (sx, sy) = (rng.below(2 * pad + 1), rng.below(2 * pad + 1));
        let angle = (rng.next_f32() * 2.0 - 1.0) * self.rotation_degrees.to_radians();
        let (h, v) = (rng.next_f32() < 0.5, rng.next_f32() < 0.5);
        let (c, b) = (rng.next_f32() * 2.0 - 1.0, rng.next_f32() * 2.0 - 1.0);
        Draw {
            dx: sx as f32 - pad as f32,
            dy: sy as f32 - pad as f32,
            angle,
            hflip: self.hflip && h,
            vflip: self.vflip && v,
            contrast: 1.0 + c * self.intensity,
            brightness: b * self.intensity,
        }
    }
}

/// Applies contrast and brightness to one channel plane: around the plane's mean, offset by
/// a fraction of its value range.
pub fn jitter(plane: &mut [f32], draw: &Draw) {
    if draw.contrast == 1.0 && draw.brightness == 0.0 || plane.is_empty() {
        return;
    }
    let (mut lo, mut hi, mut sum) = (f32::INFINITY, f32::NEG_INFINITY, 0.0f64);
    for &v in plane.iter() {
        lo = lo.min(v);
        hi = hi.max(v);
        sum += f64::from(v);
    }
    let mean = (sum / plane.len() as f64) as f32;
    let offset = draw.brightness * (hi - lo);
    for v in plane {
        *v = mean + (*v - mean) * draw.contrast + offset;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Augment {
        Augment {
            crop_padding: 3,
            rotation_degrees: 15.0,
            hflip: true,
            vflip: true,
            intensity: 0.2,
        }
    }

    #[test]
    fn draws_depend_on_seed_epoch_and_sample_only() {
        let a = all();
        assert_eq!(a.draw(1, 2, "train-000007"), a.draw(1, 2, "train-000007"));
        assert_ne!(a.draw(1, 2, "train-000007"), a.draw(1, 3, "train-000007"));
        assert_ne!(a.draw(1, 2, "train-000007"), a.draw(2, 2, "train-000007"));
        assert_ne!(a.draw(1, 2, "train-000007"), a.draw(1, 2, "train-000008"));
    }

    #[test]
    fn draws_stay_in_their_ranges_and_cover_them() {
        let a = all();
        let (mut flips, mut shifts) = (0, std::collections::BTreeSet::new());
        for i in 0..2000 {
            let d = a.draw(9, 0, &format!("s{i}"));
            assert!(d.dx.abs() <= 3.0 && d.dy.abs() <= 3.0);
            assert!(d.angle.abs() <= 15f32.to_radians());
            assert!((0.8..=1.2).contains(&d.contrast) && d.brightness.abs() <= 0.2);
            flips += usize::from(d.hflip);
            shifts.insert(d.dx as i32);
        }
        assert!((800..1200).contains(&flips), "{flips} of 2000 flipped");
        assert_eq!(shifts.len(), 7, "every shift in -3..=3 occurs");
        let off = Augment::default().draw(9, 0, "s1");
        assert_eq!(
            (off.dx, off.angle, off.hflip, off.contrast),
            (0.0, 0.0, false, 1.0)
        );
    }

    #[test]
    fn out_of_range_settings_are_refused_by_name() {
        let e = Augment {
            intensity: 2.0,
            ..Augment::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("augment.intensity"), "{e}");
    }
}
