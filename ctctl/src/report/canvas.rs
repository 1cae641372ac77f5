//! A small RGB raster: rectangles, thick lines, 8x8 bitmap text, PNG encoding. Enough for the
//! report's charts without a font or plotting stack.

use font8x8::UnicodeFonts;

/// A colour.
pub type Rgb = [u8; 3];

/// White.
pub const WHITE: Rgb = [255, 255, 255];
/// Near-black for text and axes.
pub const INK: Rgb = [33, 37, 41];
/// Light grey for grid lines.
pub const GRID: Rgb = [225, 228, 232];

/// An RGB image.
pub struct Canvas {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

impl Canvas {
    /// A canvas filled with `background`.
    pub fn new(width: usize, height: usize, background: Rgb) -> Self {
        let pixels = background
            .iter()
            .copied()
            .cycle()
            .take(width * height * 3)
            .collect();
        Canvas {
            width,
            height,
            pixels,
        }
    }

    /// Sets one pixel; outside the canvas does nothing.
    pub fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if x < 0 || y < 0 || x as usize >= self.width || y as usize >= self.height {
            return;
        }
        let i = (y as usize * self.width + x as usize) * 3;
        self.pixels[i..i + 3].copy_from_slice(&c);
    }

    /// Fills a rectangle.
    pub fn fill_rect(&mut self, x: i64, y: i64, w: i64, h: i64, c: Rgb) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.set(xx, yy, c);
            }
        }
    }

    /// Draws a rectangle's outline.
    pub fn stroke_rect(&mut self, x: i64, y: i64, w: i64, h: i64, c: Rgb) {
        self.fill_rect(x, y, w, 1, c);
        self.fill_rect(x, y + h - 1, w, 1, c);
        self.fill_rect(x, y, 1, h, c);
        self.fill_rect(x + w - 1, y, 1, h, c);
    }

    /// A line `thickness` pixels wide.
    pub fn line(&mut self, from: (f64, f64), to: (f64, f64), c: Rgb, thickness: i64) {
        let (dx, dy) = (to.0 - from.0, to.1 - from.1);
        let steps = (dx.abs().max(dy.abs()) * 2.0).ceil().max(1.0) as usize;
        let lo = -(thickness - 1) / 2;
        let hi = thickness / 2;
        for i in 0..=steps {
            let t = i as f64 / steps as f64;
            let x = (from.0 + dx * t).round() as i64;
            let y = (from.1 + dy * t).round() as i64;
            for oy in lo..=hi {
                for ox in lo..=hi {
                    self.set(x + ox, y + oy, c);
                }
            }
        }
    }

    /// Writes text with its top-left corner at (x, y); each font pixel becomes a
    /// `scale` x `scale` square. Characters the font lacks print as `?`.
    pub fn text(&mut self, x: i64, y: i64, text: &str, scale: i64, c: Rgb) {
        for (i, ch) in text.chars().enumerate() {
            let glyph = font8x8::BASIC_FONTS
                .get(ch)
                .or_else(|| font8x8::LATIN_FONTS.get(ch))
                .or_else(|| font8x8::BASIC_FONTS.get('?'))
                .unwrap_or([0; 8]);
            let left = x + i as i64 * 8 * scale;
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8 {
                    if bits & (1 << col) != 0 {
                        self.fill_rect(left + col * scale, y + row as i64 * scale, scale, scale, c);
                    }
                }
            }
        }
    }

    /// Width of `text` in pixels at `scale`.
    pub fn text_width(text: &str, scale: i64) -> i64 {
        text.chars().count() as i64 * 8 * scale
    }

    /// The image as PNG bytes.
    pub fn png(&self) -> Result<Vec<u8>, png::EncodingError> {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, self.width as u32, self.height as u32);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut writer = enc.write_header()?;
            writer.write_image_data(&self.pixels)?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_lines_change_pixels_and_encode() {
        let mut c = Canvas::new(64, 32, WHITE);
        c.text(2, 2, "Ab1", 1, INK);
        c.line((0.0, 31.0), (63.0, 20.0), [200, 0, 0], 2);
        let dark = c.pixels.chunks(3).filter(|p| p == &INK).count();
        let red = c.pixels.chunks(3).filter(|p| p == &[200, 0, 0]).count();
        assert!(dark > 20, "{dark} text pixels");
        assert!(red >= 64, "{red} line pixels");
        let png = c.png().unwrap();
        assert_eq!(&png[1..4], b"PNG");
    }
}
