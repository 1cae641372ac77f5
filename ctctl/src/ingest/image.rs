//! A decoded source image in its own precision, and the conversions ingest may apply to it.

use ctcluster_common::dataset::PixelType;
use sha2::{Digest, Sha256};

/// One decoded image: values (exact for u8/u16/i16/f32 sources) in height x width x channels
/// order, and the precision they came in.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    /// Rows.
    pub height: u32,
    /// Columns.
    pub width: u32,
    /// 1 (grayscale) or 3 (RGB).
    pub channels: u32,
    /// The source's element type.
    pub pixel_type: PixelType,
    /// The values, row-major, channels last.
    pub values: Vec<f32>,
}

/// Short lowercase name of a pixel type.
pub fn type_name(t: PixelType) -> &'static str {
    match t {
        PixelType::U8 => "u8",
        PixelType::U16 => "u16",
        PixelType::I16 => "i16",
        PixelType::F32 => "f32",
    }
}

impl Decoded {
    /// Count of NaN and infinite values.
    pub fn non_finite(&self) -> usize {
        self.values.iter().filter(|v| !v.is_finite()).count()
    }

    /// The single value of a constant image.
    pub fn constant(&self) -> Option<f32> {
        let first = *self.values.first()?;
        self.values.iter().all(|&v| v == first).then_some(first)
    }

    /// sha256 of shape, type and values: equal for exact duplicates only.
    pub fn content_hash(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.height.to_le_bytes());
        h.update(self.width.to_le_bytes());
        h.update(self.channels.to_le_bytes());
        h.update([self.pixel_type as u8]);
        for v in &self.values {
            h.update(v.to_le_bytes());
        }
        h.finalize().into()
    }

    /// RGB to grayscale (ITU-R BT.601 luma, rounded for integer types) or grayscale to RGB.
    pub fn to_channels(&mut self, channels: u32) {
        if channels == self.channels {
            return;
        }
        let integer = self.pixel_type != PixelType::F32;
        self.values = match (self.channels, channels) {
            (3, 1) => self
                .values
                .chunks_exact(3)
                .map(|p| {
                    let y = 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
                    if integer { y.round() } else { y }
                })
                .collect(),
            (1, 3) => self.values.iter().flat_map(|&v| [v, v, v]).collect(),
            _ => return,
        };
        self.channels = channels;
    }

    /// Whether every value is representable in `t` without change.
    pub fn fits(&self, t: PixelType) -> bool {
        let range = match t {
            PixelType::F32 => return true,
            PixelType::U8 => (0.0, 255.0),
            PixelType::U16 => (0.0, 65535.0),
            PixelType::I16 => (-32768.0, 32767.0),
        };
        self.values
            .iter()
            .all(|&v| v.fract() == 0.0 && v >= range.0 && v <= range.1)
    }

    /// Resizes every channel to `height` x `width` (area-averaged when shrinking), rounding for
    /// integer types.
    pub fn resize(&mut self, height: u32, width: u32) {
        let (h, w, c) = (
            self.height as usize,
            self.width as usize,
            self.channels as usize,
        );
        let (oh, ow) = (height as usize, width as usize);
        let mut out = vec![0f32; oh * ow * c];
        for ch in 0..c {
            let plane: Vec<f32> = self.values.iter().skip(ch).step_by(c).copied().collect();
            let resized = ctcluster_common::preprocess::resample(&plane, h, w, oh, ow, None);
            for (i, v) in resized.into_iter().enumerate() {
                out[i * c + ch] = if self.pixel_type == PixelType::F32 {
                    v
                } else {
                    v.round()
                };
            }
        }
        self.values = out;
        self.height = height;
        self.width = width;
    }

    /// The values as little-endian bytes of `t` (call [`Decoded::fits`] first).
    pub fn to_bytes(&self, t: PixelType) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.values.len() * t.size());
        for &v in &self.values {
            match t {
                PixelType::U8 => out.push(v as u8),
                PixelType::U16 => out.extend((v as u16).to_le_bytes()),
                PixelType::I16 => out.extend((v as i16).to_le_bytes()),
                PixelType::F32 => out.extend(v.to_le_bytes()),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(values: Vec<f32>, channels: u32) -> Decoded {
        Decoded {
            height: 1,
            width: (values.len() / channels as usize) as u32,
            channels,
            pixel_type: PixelType::U8,
            values,
        }
    }

    #[test]
    fn rgb_becomes_luma_and_bytes_keep_precision() {
        let mut d = img(vec![255.0, 0.0, 0.0, 10.0, 10.0, 10.0], 3);
        d.to_channels(1);
        assert_eq!(d.values, vec![76.0, 10.0]);
        assert!(d.fits(PixelType::U8));
        assert_eq!(d.to_bytes(PixelType::U16), vec![76, 0, 10, 0]);
        let neg = img(vec![-5.0], 1);
        assert!(!neg.fits(PixelType::U16) && neg.fits(PixelType::I16));
    }

    #[test]
    fn duplicates_hash_equal_and_blank_images_are_constant() {
        let a = img(vec![1.0, 2.0], 1);
        assert_eq!(a.content_hash(), a.clone().content_hash());
        assert_ne!(a.content_hash(), img(vec![2.0, 1.0], 1).content_hash());
        assert_eq!(img(vec![0.0, 0.0], 1).constant(), Some(0.0));
        assert_eq!(img(vec![f32::NAN, 1.0, f32::INFINITY], 1).non_finite(), 2);
    }
}
