//! Why the model decided: a heat map over the model's input for one class, by Grad-CAM
//! (Selvaraju et al. 2017) or Grad-CAM++ (Chattopadhay et al. 2018) on the architecture's
//! [`Architecture::cam_layer`](super::Architecture::cam_layer), vanilla gradient saliency
//! (Simonyan et al. 2014), SmoothGrad (Smilkov et al. 2017), input x gradient (Shrikumar et
//! al. 2016), Grad-CAM refined pixel by pixel by input x gradient (the construction of Guided
//! Grad-CAM, Selvaraju et al. 2017, with input x gradient as its pixel-space map) or occlusion
//! (Zeiler and Fergus 2014). Maps are image-sized (the model's input), scaled to [0, 1] from
//! their own minimum and maximum.

use burn::tensor::activation::softmax;
use burn::tensor::{DType, Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::ModelConfig;
use super::arch::{CamGeometry, Weights};
use super::compute::{guarded, to_f32};
use crate::rng::{KeyedRng, derive};
use crate::{Error, Result};

/// How a map is computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// The CAM layer's activations weighed by the spatial mean of the class score's gradient.
    #[default]
    #[serde(rename = "gradcam")]
    GradCam,
    /// Grad-CAM with Grad-CAM++'s pixel-wise weights.
    #[serde(rename = "gradcam++")]
    GradCamPlusPlus,
    /// The magnitude of the class score's gradient with respect to the input pixels.
    Saliency,
    /// Saliency averaged over noisy copies of the image.
    SmoothGrad,
    /// The class score's gradient times the normalised input (its difference from the
    /// normalisation mean), summed over channels, where positive: each pixel's first-order share
    /// of the score against an image at the mean.
    #[serde(rename = "input-x-gradient")]
    InputXGradient,
    /// Grad-CAM multiplied pixel by pixel by input x gradient: Grad-CAM's class region at the
    /// input's resolution.
    #[serde(rename = "gradcam-x-input")]
    GradCamXInput,
    /// The drop in the class probability when a patch of the image is blanked.
    Occlusion,
}

impl Method {
    /// Its name on the command line and in `explanations.json`.
    pub fn name(self) -> &'static str {
        match self {
            Method::GradCam => "gradcam",
            Method::GradCamPlusPlus => "gradcam++",
            Method::Saliency => "saliency",
            Method::SmoothGrad => "smoothgrad",
            Method::InputXGradient => "input-x-gradient",
            Method::GradCamXInput => "gradcam-x-input",
            Method::Occlusion => "occlusion",
        }
    }

    /// Whether the map reads the architecture's CAM layer (else it is computed at the input).
    pub fn reads_cam_layer(self) -> bool {
        matches!(
            self,
            Method::GradCam | Method::GradCamPlusPlus | Method::GradCamXInput
        )
    }

    /// Every method.
    pub const ALL: [Method; 7] = [
        Method::GradCam,
        Method::GradCamPlusPlus,
        Method::Saliency,
        Method::SmoothGrad,
        Method::InputXGradient,
        Method::GradCamXInput,
        Method::Occlusion,
    ];
}

impl std::str::FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Method::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Method::ALL.iter().map(|m| m.name()).collect();
                Error::invalid(
                    "method",
                    format!("{s:?} is not one of {}", names.join(", ")),
                )
            })
    }
}

/// Noisy copies SmoothGrad averages.
pub const SMOOTHGRAD_SAMPLES: usize = 24;
/// SmoothGrad's noise, as a fraction of the normalised image's value range.
pub const SMOOTHGRAD_NOISE: f32 = 0.15;

/// One image's explanation.
#[derive(Clone, Debug, PartialEq)]
pub struct Explanation {
    /// The class explained.
    pub class: usize,
    /// Every class's probability for the image.
    pub probs: Vec<f32>,
    /// The map, `height x width` of the model's input, row-major, in [0, 1].
    pub map: Vec<f32>,
    /// The layer the map reads from (Grad-CAM methods), or `input`.
    pub layer: String,
}

/// The map for `class` (the predicted class when `None`) of one image: `pixels` is the model's
/// input before normalisation (`channels x height x width`, what
/// [`BatchBuilder`](super::BatchBuilder) or `ctctl predict` prepares).
pub fn explain(
    cfg: &ModelConfig,
    params: &[f32],
    pixels: &[f32],
    method: Method,
    class: Option<usize>,
    device: &Device,
) -> Result<Explanation> {
    let per = cfg.channels * cfg.height * cfg.width;
    if pixels.len() != per {
        return Err(Error::invalid(
            "image",
            format!("{} values, the model takes {per}", pixels.len()),
        ));
    }
    if let Some(c) = class.filter(|&c| c >= cfg.classes) {
        return Err(Error::invalid(
            "class",
            format!("{c} is not below the model's {} classes", cfg.classes),
        ));
    }
    guarded("explanation", || {
        let x = cfg.normalised(pixels);
        let probs = probabilities(cfg, params, &x, 1, device)?;
        let class = class.unwrap_or_else(|| super::argmax(&probs));
        let (map, layer) = match method {
            Method::GradCam | Method::GradCamPlusPlus | Method::GradCamXInput => {
                let (a, g, [k, h, w]) = cam_and_gradient(cfg, params, &x, class, device)?;
                let small = if method == Method::GradCamPlusPlus {
                    grad_cam_plus_plus(&a, &g, k, h * w)
                } else {
                    grad_cam(&a, &g, k, h * w)
                };
                let arch = cfg.arch();
                let mut map =
                    cam_to_input(&small, h, w, arch.cam_geometry(), cfg.height, cfg.width);
                if method == Method::GradCamXInput {
                    let fine = input_x_gradient(cfg, params, &x, class, device)?;
                    map.iter_mut().zip(fine).for_each(|(m, f)| *m *= f);
                }
                (map, arch.cam_layer().to_string())
            }
            Method::InputXGradient => (
                input_x_gradient(cfg, params, &x, class, device)?,
                "input".into(),
            ),
            Method::Saliency => {
                let g = input_gradient(cfg, params, &x, 1, class, device)?;
                (channel_max_abs(cfg, &g), "input".into())
            }
            Method::SmoothGrad => (smooth_grad(cfg, params, &x, class, device)?, "input".into()),
            Method::Occlusion => (
                occlusion(cfg, params, &x, class, probs[class], device)?,
                "input".into(),
            ),
        };
        Ok(Explanation {
            class,
            probs,
            map: scaled(map),
            layer,
        })
    })
}

fn input_tensor(cfg: &ModelConfig, x: &[f32], n: usize, device: &Device) -> Tensor<4> {
    Tensor::<4>::from_data(
        TensorData::new(x.to_vec(), vec![n, cfg.channels, cfg.height, cfg.width]),
        (device, DType::F32),
    )
}

/// Class probabilities of `n` normalised images.
fn probabilities(
    cfg: &ModelConfig,
    params: &[f32],
    x: &[f32],
    n: usize,
    device: &Device,
) -> Result<Vec<f32>> {
    let arch = cfg.arch();
    let mut w = Weights::new(arch.layout(), params, device, DType::F32, false)?;
    let logits = arch.forward(&mut w, input_tensor(cfg, x, n, device), None)?;
    to_f32(softmax(logits, 1), "probabilities")
}

/// The sum over images of the class score (logit) of `class`.
fn class_score(logits: Tensor<2>, class: usize) -> Tensor<1> {
    let n = logits.dims()[0];
    logits.slice([0..n, class..class + 1]).sum()
}

/// The gradient of `class`'s score with respect to `n` normalised input images.
fn input_gradient(
    cfg: &ModelConfig,
    params: &[f32],
    x: &[f32],
    n: usize,
    class: usize,
    device: &Device,
) -> Result<Vec<f32>> {
    let device = device.clone().autodiff();
    let arch = cfg.arch();
    let mut w = Weights::new(arch.layout(), params, &device, DType::F32, false)?;
    let input = input_tensor(cfg, x, n, &device).require_grad();
    let logits = arch.forward(&mut w, input.clone(), None)?;
    let grads = class_score(logits, class).backward();
    let g = input
        .grad(&grads)
        .ok_or_else(|| Error::Compute("no gradient for the input".into()))?;
    to_f32(g, "input gradient")
}

/// The CAM layer's activations and the gradient of `class`'s score with respect to them, with
/// their shape (channels, height, width).
fn cam_and_gradient(
    cfg: &ModelConfig,
    params: &[f32],
    x: &[f32],
    class: usize,
    device: &Device,
) -> Result<(Vec<f32>, Vec<f32>, [usize; 3])> {
    let device = device.clone().autodiff();
    let arch = cfg.arch();
    let mut w = Weights::new(arch.layout(), params, &device, DType::F32, false)?;
    // The trunk without a graph; its output becomes the leaf the head is differentiated at.
    let cam = arch
        .trunk(&mut w, input_tensor(cfg, x, 1, &device))?
        .detach()
        .require_grad();
    let [_, k, h, wd] = cam.dims();
    let logits = arch.head(&mut w, cam.clone(), None)?;
    let grads = class_score(logits, class).backward();
    let g = cam
        .grad(&grads)
        .ok_or_else(|| Error::Compute("no gradient for the CAM layer".into()))?;
    Ok((
        to_f32(cam, "activations")?,
        to_f32(g, "gradient")?,
        [k, h, wd],
    ))
}

/// Grad-CAM: ReLU of the channels weighed by their gradient's spatial mean.
fn grad_cam(a: &[f32], g: &[f32], k: usize, hw: usize) -> Vec<f32> {
    let mut map = vec![0f32; hw];
    for c in 0..k {
        let gc = &g[c * hw..(c + 1) * hw];
        let alpha = gc.iter().sum::<f32>() / hw as f32;
        for (m, v) in map.iter_mut().zip(&a[c * hw..(c + 1) * hw]) {
            *m += alpha * v;
        }
    }
    map.iter().map(|v| v.max(0.0)).collect()
}

/// Grad-CAM++: each channel weighed by the positive gradients, pixel by pixel, with the
/// second- and third-order terms of an exponential score approximated by powers of the
/// gradient.
fn grad_cam_plus_plus(a: &[f32], g: &[f32], k: usize, hw: usize) -> Vec<f32> {
    let mut map = vec![0f32; hw];
    for c in 0..k {
        let (ac, gc) = (&a[c * hw..(c + 1) * hw], &g[c * hw..(c + 1) * hw]);
        let sum_a: f32 = ac.iter().sum();
        let weight: f32 = gc
            .iter()
            .map(|&gv| {
                let (g2, g3) = (gv * gv, gv * gv * gv);
                let denom = 2.0 * g2 + sum_a * g3;
                let alpha = if gv != 0.0 && denom.abs() > 1e-12 {
                    g2 / denom
                } else {
                    0.0
                };
                alpha * gv.max(0.0)
            })
            .sum();
        for (m, v) in map.iter_mut().zip(ac) {
            *m += weight * v;
        }
    }
    map.iter().map(|v| v.max(0.0)).collect()
}

/// A map over the CAM layer's `h x w` cells onto the `out_h x out_w` input, each input pixel
/// interpolated bilinearly between the cells around it (clamped at the edges).
pub fn cam_to_input(
    map: &[f32],
    h: usize,
    w: usize,
    geometry: CamGeometry,
    out_h: usize,
    out_w: usize,
) -> Vec<f32> {
    let axis = |p: usize, cells: usize| -> (usize, usize, f32) {
        let u = ((p as f32 - geometry.offset) / geometry.stride).clamp(0.0, (cells - 1) as f32);
        let lo = u.floor() as usize;
        let hi = (lo + 1).min(cells - 1);
        (lo, hi, u - lo as f32)
    };
    let mut out = Vec::with_capacity(out_h * out_w);
    for y in 0..out_h {
        let (y0, y1, fy) = axis(y, h);
        for x in 0..out_w {
            let (x0, x1, fx) = axis(x, w);
            let top = map[y0 * w + x0] * (1.0 - fx) + map[y0 * w + x1] * fx;
            let bottom = map[y1 * w + x0] * (1.0 - fx) + map[y1 * w + x1] * fx;
            out.push(top * (1.0 - fy) + bottom * fy);
        }
    }
    out
}

/// Per pixel, the largest gradient magnitude over the channels.
fn channel_max_abs(cfg: &ModelConfig, g: &[f32]) -> Vec<f32> {
    let hw = cfg.height * cfg.width;
    let mut out = vec![0f32; hw];
    for plane in g.chunks_exact(hw) {
        for (o, v) in out.iter_mut().zip(plane) {
            *o = o.max(v.abs());
        }
    }
    out
}

/// Input x gradient: per pixel, the sum over channels of the class score's gradient times the
/// normalised input, where positive. The input is normalised to 0 at the normalisation mean, the
/// value occlusion and the deletion test remove a pixel to, so a pixel at the mean gets nothing.
fn input_x_gradient(
    cfg: &ModelConfig,
    params: &[f32],
    x: &[f32],
    class: usize,
    device: &Device,
) -> Result<Vec<f32>> {
    let g = input_gradient(cfg, params, x, 1, class, device)?;
    let hw = cfg.height * cfg.width;
    let mut out = vec![0f32; hw];
    for (gp, xp) in g.chunks_exact(hw).zip(x.chunks_exact(hw)) {
        for ((o, gv), xv) in out.iter_mut().zip(gp).zip(xp) {
            *o += gv * xv;
        }
    }
    Ok(out.into_iter().map(|v| v.max(0.0)).collect())
}

/// SmoothGrad: the mean saliency of noisy copies (noise drawn from a fixed key, so the same
/// image always gets the same map).
fn smooth_grad(
    cfg: &ModelConfig,
    params: &[f32],
    x: &[f32],
    class: usize,
    device: &Device,
) -> Result<Vec<f32>> {
    let (lo, hi) = x
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
            (l.min(v), h.max(v))
        });
    let sigma = f64::from(SMOOTHGRAD_NOISE * (hi - lo).max(1e-6));
    let mut rng = KeyedRng::new(derive(&[0x5300_7468, x.len() as u64]));
    let mut noisy = Vec::with_capacity(x.len() * SMOOTHGRAD_SAMPLES);
    for _ in 0..SMOOTHGRAD_SAMPLES {
        noisy.extend(x.iter().map(|&v| v + (rng.next_normal() * sigma) as f32));
    }
    let g = input_gradient(cfg, params, &noisy, SMOOTHGRAD_SAMPLES, class, device)?;
    let per = x.len();
    let mut sum = vec![0f32; cfg.height * cfg.width];
    for copy in g.chunks_exact(per) {
        for (s, v) in sum.iter_mut().zip(channel_max_abs(cfg, copy)) {
            *s += v / SMOOTHGRAD_SAMPLES as f32;
        }
    }
    Ok(sum)
}

/// Occlusion: square patches (a seventh of the shorter side, at least 2 pixels) slid by half
/// their side are set to 0 (the normalisation's mean); a pixel's value is the mean drop of the
/// class probability over the patches covering it.
fn occlusion(
    cfg: &ModelConfig,
    params: &[f32],
    x: &[f32],
    class: usize,
    base: f32,
    device: &Device,
) -> Result<Vec<f32>> {
    let (h, w, hw) = (cfg.height, cfg.width, cfg.height * cfg.width);
    let patch = (h.min(w) as f32 / 7.0).round().max(2.0) as usize;
    let stride = (patch / 2).max(1);
    let starts = |side: usize| -> Vec<usize> {
        let mut s: Vec<usize> = (0..=side.saturating_sub(patch)).step_by(stride).collect();
        if s.last() != Some(&side.saturating_sub(patch)) {
            s.push(side.saturating_sub(patch));
        }
        s
    };
    let spots: Vec<(usize, usize)> = starts(h)
        .into_iter()
        .flat_map(|y| starts(w).into_iter().map(move |x0| (y, x0)))
        .collect();
    let mut drop = vec![0f32; hw];
    let mut cover = vec![0f32; hw];
    for chunk in spots.chunks(64) {
        let mut batch = Vec::with_capacity(chunk.len() * x.len());
        for &(y0, x0) in chunk {
            let mut img = x.to_vec();
            for plane in img.chunks_exact_mut(hw) {
                for y in y0..(y0 + patch).min(h) {
                    plane[y * w + x0..(x0 + patch).min(w) + y * w].fill(0.0);
                }
            }
            batch.extend(img);
        }
        let probs = probabilities(cfg, params, &batch, chunk.len(), device)?;
        for (&(y0, x0), p) in chunk.iter().zip(probs.chunks_exact(cfg.classes)) {
            let d = base - p[class];
            for y in y0..(y0 + patch).min(h) {
                for xx in x0..(x0 + patch).min(w) {
                    drop[y * w + xx] += d;
                    cover[y * w + xx] += 1.0;
                }
            }
        }
    }
    Ok(drop
        .iter()
        .zip(&cover)
        .map(|(d, c)| if *c > 0.0 { (d / c).max(0.0) } else { 0.0 })
        .collect())
}

/// Scaled to [0, 1] from the map's own minimum and maximum (as Grad-CAM's reference code
/// shows its maps); a constant map is all zeros.
fn scaled(map: Vec<f32>) -> Vec<f32> {
    let (lo, hi) = map
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
            (l.min(v), h.max(v))
        });
    if hi > lo && (hi - lo).is_finite() {
        map.into_iter().map(|v| (v - lo) / (hi - lo)).collect()
    } else {
        vec![0.0; map.len()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_image;

    /// A seed CNN for 16x16 images and an image whose left half sits at the normalisation mean.
    fn half_at_mean() -> (ModelConfig, Vec<f32>, Vec<f32>) {
        let cfg = ModelConfig::seed_cnn(&test_image(16), 2, 0.0, 100.0, 50.0).unwrap();
        let params = cfg.init_params(3);
        let pixels = (0..256)
            .map(|i| {
                if i % 16 < 8 {
                    100.0
                } else {
                    (i * 37 % 255) as f32
                }
            })
            .collect();
        (cfg, params, pixels)
    }

    #[test]
    fn input_x_gradient_gives_nothing_to_pixels_at_the_mean_and_refines_grad_cam() {
        let (cfg, params, pixels) = half_at_mean();
        let dev = Device::flex();
        let ixg = explain(
            &cfg,
            &params,
            &pixels,
            Method::InputXGradient,
            Some(1),
            &dev,
        )
        .unwrap();
        let cam = explain(&cfg, &params, &pixels, Method::GradCam, Some(1), &dev).unwrap();
        let both = explain(&cfg, &params, &pixels, Method::GradCamXInput, Some(1), &dev).unwrap();
        assert_eq!(
            (ixg.layer.as_str(), both.layer.as_str()),
            ("input", "conv2")
        );
        let left = |m: &[f32]| (0..256).filter(|i| i % 16 < 8).map(|i| m[i]).sum::<f32>();
        assert_eq!(left(&ixg.map), 0.0, "pixels at the mean carry no share");
        assert_eq!(left(&both.map), 0.0);
        assert!(ixg.map.iter().any(|&v| v > 0.0), "the other half does");
        // The refined map is positive exactly where both factors are.
        for ((b, i), c) in both.map.iter().zip(&ixg.map).zip(&cam.map) {
            assert_eq!(*b > 0.0, *i > 0.0 && *c > 0.0, "{b} from {i} and {c}");
        }
    }

    #[test]
    fn every_method_parses_from_its_own_name_and_unknown_ones_are_named() {
        for m in Method::ALL {
            assert_eq!(m.name().parse::<Method>().unwrap(), m);
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(json, format!("{:?}", m.name()));
        }
        let err = "gradcam+".parse::<Method>().unwrap_err().to_string();
        assert!(
            err.contains("gradcam+") && err.contains("gradcam-x-input"),
            "{err}"
        );
    }
}
