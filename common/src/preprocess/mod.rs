//! What a worker does to a stored image before the model sees it: CT windowing, resizing to the
//! model's input and, for training, augmentation. Runs on the workers, from the job spec; the
//! model records it, so evaluation applies the same windowing and resize (never augmentation).

mod augment;
mod resample;
mod window;

use serde::{Deserialize, Serialize};

pub use augment::{Augment, Draw, jitter};
pub use resample::resample;
pub use window::{PRESETS, Window};

use crate::Result;
use crate::dataset::ImageInfo;

/// The input pipeline recorded in a model's configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputPipeline {
    /// The window applied to stored values (CT in Hounsfield units), giving [0, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    /// Training augmentation.
    #[serde(default, skip_serializing_if = "Augment::is_off")]
    pub augment: Augment,
}

impl InputPipeline {
    /// Whether the pipeline leaves pixels as stored (apart from resizing).
    pub fn is_identity(&self) -> bool {
        *self == InputPipeline::default()
    }

    /// Checks every setting.
    pub fn validate(&self) -> Result<()> {
        if let Some(w) = &self.window {
            w.validate()?;
        }
        self.augment.validate()
    }

    /// Turns one stored image (height x width x channels, as f32) into the model's input
    /// (channels x `out_h` x `out_w`), appended to `out`: window, resize, then the augmentation
    /// `draw` when training.
    pub fn apply(
        &self,
        image: &[f32],
        src: &ImageInfo,
        out_h: usize,
        out_w: usize,
        draw: Option<&Draw>,
        out: &mut Vec<f32>,
    ) {
        let (h, w, c) = (
            src.height as usize,
            src.width as usize,
            src.channels as usize,
        );
        let geometry = (h, w) != (out_h, out_w) || draw.is_some_and(moves);
        let mut plane = Vec::with_capacity(h * w);
        for ch in 0..c {
            plane.clear();
            plane.extend(image.iter().skip(ch).step_by(c).copied());
            if let Some(win) = &self.window {
                win.apply(&mut plane);
            }
            let start = out.len();
            if geometry {
                out.extend(resample(&plane, h, w, out_h, out_w, draw));
            } else {
                out.extend_from_slice(&plane);
            }
            if let Some(d) = draw {
                jitter(&mut out[start..], d);
            }
        }
    }
}

fn moves(d: &Draw) -> bool {
    d.dx != 0.0 || d.dy != 0.0 || d.angle != 0.0 || d.hflip || d.vflip
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::PixelType;

    fn info(h: u32, w: u32, c: u32) -> ImageInfo {
        ImageInfo {
            height: h,
            width: w,
            channels: c,
            pixel_type: PixelType::I16,
        }
    }

    #[test]
    fn identity_keeps_values_and_rgb_becomes_planar() {
        let img: Vec<f32> = (0..2 * 3 * 3).map(|v| v as f32).collect();
        let mut out = Vec::new();
        InputPipeline::default().apply(&img, &info(2, 3, 3), 2, 3, None, &mut out);
        // Channel 0 holds every third value, then channel 1, then 2.
        assert_eq!(&out[..6], &[0.0, 3.0, 6.0, 9.0, 12.0, 15.0]);
        assert_eq!(&out[6..12], &[1.0, 4.0, 7.0, 10.0, 13.0, 16.0]);
    }

    #[test]
    fn brain_window_then_resize_halves_the_image() {
        // A 4x4 CT patch: left half 0 HU, right half 80 HU.
        let img: Vec<f32> = (0..16)
            .map(|i| if i % 4 < 2 { 0.0 } else { 80.0 })
            .collect();
        let p = InputPipeline {
            window: Some(Window::preset("brain").unwrap()),
            augment: Augment::default(),
        };
        let mut out = Vec::new();
        p.apply(&img, &info(4, 4, 1), 2, 2, None, &mut out);
        assert_eq!(out, vec![0.0, 1.0, 0.0, 1.0]);
    }

    #[test]
    fn a_shift_moves_the_image_by_whole_pixels_and_fills_with_its_lowest_value() {
        let img: Vec<f32> = (0..9).map(|v| v as f32 + 10.0).collect();
        let draw = Draw {
            dx: 1.0,
            dy: 0.0,
            angle: 0.0,
            hflip: false,
            vflip: false,
            contrast: 1.0,
            brightness: 0.0,
        };
        let mut out = Vec::new();
        InputPipeline::default().apply(&img, &info(3, 3, 1), 3, 3, Some(&draw), &mut out);
        assert_eq!(
            out,
            vec![10.0, 10.0, 11.0, 10.0, 13.0, 14.0, 10.0, 16.0, 17.0]
        );
        let flip = Draw {
            dx: 0.0,
            hflip: true,
            ..draw
        };
        out.clear();
        InputPipeline::default().apply(&img, &info(3, 3, 1), 3, 3, Some(&flip), &mut out);
        assert_eq!(
            out,
            vec![12.0, 11.0, 10.0, 15.0, 14.0, 13.0, 18.0, 17.0, 16.0]
        );
    }

    #[test]
    fn a_quarter_turn_rotates_the_image() {
        // 2x2: [[1, 2], [3, 4]] turned by +90 degrees (counter-clockwise on screen, y down).
        let img = vec![1.0, 2.0, 3.0, 4.0];
        let draw = Draw {
            dx: 0.0,
            dy: 0.0,
            angle: std::f32::consts::FRAC_PI_2,
            hflip: false,
            vflip: false,
            contrast: 1.0,
            brightness: 0.0,
        };
        let mut out = Vec::new();
        InputPipeline::default().apply(&img, &info(2, 2, 1), 2, 2, Some(&draw), &mut out);
        let rounded: Vec<f32> = out.iter().map(|v| v.round()).collect();
        let mut sorted = rounded.clone();
        sorted.sort_by(f32::total_cmp);
        assert_eq!(sorted, vec![1.0, 2.0, 3.0, 4.0], "{out:?}");
        assert_ne!(rounded, img, "the image turned");
    }

    #[test]
    fn serialises_to_nothing_when_off_so_old_models_read_the_same() {
        let json = serde_json::to_string(&InputPipeline::default()).unwrap();
        assert_eq!(json, "{}");
    }
}
