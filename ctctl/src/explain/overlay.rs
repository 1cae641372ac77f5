//! The picture of one explanation: the model's input image (after its window), enlarged, the
//! heat map blended over it, a colour bar, and a title with the class and its probability.

use crate::report::canvas::{Canvas, INK, Rgb, WHITE};

/// Side the image is enlarged to at least (nearest neighbour, whole factors up to 32).
const MIN_SIDE: usize = 256;
/// Opacity of the map where it is 1 (it fades to transparent at 0).
const ALPHA: f32 = 0.6;

/// The jet colour scale: dark blue at 0, green at 0.5, dark red at 1.
pub fn jet(v: f32) -> Rgb {
    let v = v.clamp(0.0, 1.0);
    let c = |x: f32| ((1.5 - (4.0 * v - x).abs()).clamp(0.0, 1.0) * 255.0).round() as u8;
    [c(3.0), c(2.0), c(1.0)]
}

/// `pixels` (channels x h x w, 1 or 3 channels) as grey or RGB values 0 to 255, scaled from
/// the image's own range.
fn display_rgb(pixels: &[f32], channels: usize, h: usize, w: usize) -> Vec<Rgb> {
    let (lo, hi) = pixels
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, u), &v| {
            (l.min(v), u.max(v))
        });
    let span = if hi > lo { hi - lo } else { 1.0 };
    let level = |v: f32| (((v - lo) / span) * 255.0).round().clamp(0.0, 255.0) as u8;
    let hw = h * w;
    (0..hw)
        .map(|i| {
            if channels >= 3 {
                [
                    level(pixels[i]),
                    level(pixels[hw + i]),
                    level(pixels[2 * hw + i]),
                ]
            } else {
                let g = level(pixels[i]);
                [g, g, g]
            }
        })
        .collect()
}

/// The PNG: `pixels` (the model's input, channels x h x w), `map` (h x w in [0, 1]), and a title.
pub fn overlay_png(
    pixels: &[f32],
    channels: usize,
    h: usize,
    w: usize,
    map: &[f32],
    title: &str,
) -> Result<Vec<u8>, png::EncodingError> {
    let scale = MIN_SIDE.div_ceil(h.max(w)).clamp(1, 32);
    let (iw, ih) = ((w * scale) as i64, (h * scale) as i64);
    let margin = 10i64;
    let top = 36i64;
    let bar_x = margin + iw + 12;
    let bar_w = 16i64;
    let width = bar_x + bar_w + 8 + Canvas::text_width("1.0", 1) + margin;
    let width = width.max(margin * 2 + Canvas::text_width(title, 1));
    let mut c = Canvas::new(width as usize, (top + ih + margin) as usize, WHITE);
    c.text(margin, 12, title, 1, INK);
    let base = display_rgb(pixels, channels, h, w);
    for y in 0..h {
        for x in 0..w {
            let m = map[y * w + x].clamp(0.0, 1.0);
            let heat = jet(m);
            let a = ALPHA * m;
            let px: Rgb = std::array::from_fn(|k| {
                (f32::from(base[y * w + x][k]) * (1.0 - a) + f32::from(heat[k]) * a).round() as u8
            });
            c.fill_rect(
                margin + (x * scale) as i64,
                top + (y * scale) as i64,
                scale as i64,
                scale as i64,
                px,
            );
        }
    }
    // The colour bar, 1 at the top.
    for y in 0..ih {
        let v = 1.0 - y as f32 / (ih - 1).max(1) as f32;
        c.fill_rect(bar_x, top + y, bar_w, 1, jet(v));
    }
    c.stroke_rect(bar_x, top, bar_w, ih, INK);
    c.text(bar_x + bar_w + 4, top, "1.0", 1, INK);
    c.text(bar_x + bar_w + 4, top + ih - 8, "0.0", 1, INK);
    c.png()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_map_shows_where_it_is_high_and_the_image_where_it_is_zero() {
        assert_eq!(jet(0.0), [0, 0, 128]);
        assert_eq!(jet(1.0), [128, 0, 0]);
        assert_eq!(jet(0.5)[1], 255);
        let (h, w) = (8, 8);
        let pixels: Vec<f32> = (0..64).map(|i| i as f32).collect();
        let mut map = vec![0.0; 64];
        map[9] = 1.0;
        let png = overlay_png(&pixels, 1, h, w, &map, "lesion 0.97 (gradcam)").unwrap();
        let mut dec = png::Decoder::new(std::io::Cursor::new(png))
            .read_info()
            .unwrap();
        let mut buf = vec![0; dec.output_buffer_size().unwrap()];
        let info = dec.next_frame(&mut buf).unwrap();
        let at = |x: usize, y: usize| {
            let i = (y * info.width as usize + x) * 3;
            [buf[i], buf[i + 1], buf[i + 2]]
        };
        // 8x8 enlarged 32 times; pixel (1, 1) is tinted red, pixel (0, 0) stays grey.
        let (x1, y1) = (10 + 32 + 16, 36 + 32 + 16);
        let hot = at(x1, y1);
        assert!(hot[0] > hot[2] + 50, "{hot:?}");
        let cold = at(10 + 16, 36 + 16);
        assert_eq!(cold[0], cold[1]);
        assert_eq!(cold[1], cold[2]);
    }
}
