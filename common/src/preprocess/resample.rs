//! Resampling one channel plane: resize and the geometric augmentations in one pass of inverse
//! mapping with bilinear interpolation (supersampled when shrinking, so a 512 -> 64 resize
//! averages instead of aliasing). Whole-pixel shifts and flips reproduce pixels exactly.

use super::augment::Draw;

/// Samples `src` (`sh` x `sw`) onto an `oh` x `ow` grid, through the inverse of the draw's
/// flip, rotation about the centre and shift (in output pixels). Points outside the source take
/// the plane's lowest value.
pub fn resample(
    src: &[f32],
    sh: usize,
    sw: usize,
    oh: usize,
    ow: usize,
    draw: Option<&Draw>,
) -> Vec<f32> {
    let fill = src.iter().copied().fold(f32::INFINITY, f32::min);
    let (scale_x, scale_y) = (sw as f32 / ow as f32, sh as f32 / oh as f32);
    let k = (scale_x.max(scale_y).ceil() as usize).clamp(1, 8);
    let (cx, cy) = (ow as f32 / 2.0, oh as f32 / 2.0);
    let (dx, dy, angle, hflip, vflip) = draw.map_or((0.0, 0.0, 0.0, false, false), |d| {
        (d.dx, d.dy, d.angle, d.hflip, d.vflip)
    });
    let (sin, cos) = angle.sin_cos();
    let inv_k = 1.0 / k as f32;
    let mut out = Vec::with_capacity(oh * ow);
    for yo in 0..oh {
        for xo in 0..ow {
            let mut acc = 0.0f32;
            for j in 0..k {
                for i in 0..k {
                    let u = xo as f32 + (i as f32 + 0.5) * inv_k - dx;
                    let v = yo as f32 + (j as f32 + 0.5) * inv_k - dy;
                    let (du, dv) = (u - cx, v - cy);
                    let mut u = cx + cos * du + sin * dv;
                    let mut v = cy - sin * du + cos * dv;
                    if hflip {
                        u = ow as f32 - u;
                    }
                    if vflip {
                        v = oh as f32 - v;
                    }
                    acc += bilinear(src, sh, sw, u * scale_x - 0.5, v * scale_y - 0.5, fill);
                }
            }
            out.push(if k == 1 { acc } else { acc * inv_k * inv_k });
        }
    }
    out
}

fn bilinear(src: &[f32], h: usize, w: usize, x: f32, y: f32, fill: f32) -> f32 {
    if !(x >= -0.5 && y >= -0.5 && x <= w as f32 - 0.5 && y <= h as f32 - 0.5) {
        return fill;
    }
    let (x, y) = (x.clamp(0.0, (w - 1) as f32), y.clamp(0.0, (h - 1) as f32));
    let (x0, y0) = (x.floor() as usize, y.floor() as usize);
    let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
    let (fx, fy) = (x - x0 as f32, y - y0 as f32);
    let at = |yy: usize, xx: usize| src[yy * w + xx];
    let top = if fx == 0.0 {
        at(y0, x0)
    } else {
        at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx
    };
    if fy == 0.0 {
        return top;
    }
    let bottom = if fx == 0.0 {
        at(y1, x0)
    } else {
        at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx
    };
    top * (1.0 - fy) + bottom * fy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrinking_averages_blocks() {
        // 4x4 checkerboard of 0 and 1 shrinks to a uniform 0.5 (a plain bilinear sample
        // would alias to 0 or 1).
        let src: Vec<f32> = (0..16).map(|i| ((i / 4 + i % 4) % 2) as f32).collect();
        let out = resample(&src, 4, 4, 2, 2, None);
        assert!(out.iter().all(|v| (v - 0.5).abs() < 1e-6), "{out:?}");
    }

    #[test]
    fn growing_interpolates_between_pixels() {
        let out = resample(&[0.0, 1.0], 1, 2, 1, 4, None);
        assert_eq!(out, vec![0.0, 0.25, 0.75, 1.0]);
    }
}
