//! `ctctl dataset preview URL --out grid.png`: a labelled grid of a split's first images, with
//! a display window (CT presets in Hounsfield units, or the dataset's own range).

use std::path::Path;

use clap::ValueEnum;
use ctcluster_common::dataset::{PixelType, load_manifest, load_shard};
use ctcluster_common::storage::StoreUrl;

use crate::CtlError;
use crate::report::canvas::{Canvas, INK, WHITE};

/// How pixel values map to grey levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Window {
    /// The dataset's own minimum to maximum (right for 8-bit X-rays and photographs).
    Auto,
    /// CT brain: centre 40 HU, width 80.
    Brain,
    /// CT subdural: centre 75 HU, width 215.
    Subdural,
    /// CT bone: centre 600 HU, width 2800.
    Bone,
    /// CT lung: centre -600 HU, width 1500.
    Lung,
}

impl Window {
    /// The (low, high) values shown as black and white.
    fn range(self, min: f64, max: f64) -> (f64, f64) {
        let name = match self {
            Window::Auto => return (min, if max > min { max } else { min + 1.0 }),
            Window::Brain => "brain",
            Window::Subdural => "subdural",
            Window::Bone => "bone",
            Window::Lung => "lung",
        };
        // The same presets the workers' `preprocess.window` uses.
        let (lo, hi) = ctcluster_common::preprocess::Window::preset(name)
            .map_or((min as f32, max as f32), |w| w.range());
        (f64::from(lo), f64::from(hi))
    }
}

/// Tiles per row.
const COLUMNS: usize = 8;
/// Each tile is at least this many pixels wide.
const TILE: usize = 112;

/// Draws the first `count` images of `split` with their class names into a PNG at `out`.
pub async fn preview(
    url: &str,
    split: &str,
    count: usize,
    window: Window,
    out: &Path,
) -> Result<String, CtlError> {
    if count == 0 || count > 256 {
        return Err(CtlError::Usage("--count must be in 1..=256".into()));
    }
    let ds = StoreUrl::parse(url)?;
    let m = load_manifest(&ds).await?;
    if window != Window::Auto && m.image.pixel_type != PixelType::I16 {
        eprintln!(
            "ctctl: note: a {window:?} window expects Hounsfield units (i16); this dataset is {:?}",
            m.image.pixel_type
        );
    }
    let shards = m.split(split, ds.as_str())?.shards.len();
    let (h, w, c) = (
        m.image.height as usize,
        m.image.width as usize,
        m.image.channels as usize,
    );
    let mut images: Vec<(Vec<f32>, String)> = Vec::new();
    for shard in 0..shards {
        let s = load_shard(&ds, &m, split, shard).await?;
        for row in 0..s.ids.len() {
            let class = m
                .classes
                .get(s.labels[row] as usize)
                .cloned()
                .unwrap_or_default();
            images.push((s.image(row).to_vec(), class));
            if images.len() == count {
                break;
            }
        }
        if images.len() == count {
            break;
        }
    }
    let (lo, hi) = window.range(m.pixel_stats.min, m.pixel_stats.max);
    let scale = TILE.div_ceil(w.max(1)).max(1);
    let (tw, th) = (w * scale, h * scale + 20);
    let cols = COLUMNS.min(images.len().max(1));
    let rows = images.len().div_ceil(cols);
    let mut canvas = Canvas::new(cols * (tw + 8) + 8, rows * (th + 8) + 8, WHITE);
    for (i, (pixels, class)) in images.iter().enumerate() {
        let (x0, y0) = (8 + (i % cols) * (tw + 8), 8 + (i / cols) * (th + 8));
        for y in 0..h {
            for x in 0..w {
                let grey = |ch: usize| {
                    let v = f64::from(pixels[(y * w + x) * c + ch]);
                    (((v - lo) / (hi - lo)).clamp(0.0, 1.0) * 255.0).round() as u8
                };
                let rgb = if c == 3 {
                    [grey(0), grey(1), grey(2)]
                } else {
                    [grey(0); 3]
                };
                canvas.fill_rect(
                    (x0 + x * scale) as i64,
                    (y0 + y * scale) as i64,
                    scale as i64,
                    scale as i64,
                    rgb,
                );
            }
        }
        let label: String = class.chars().take(tw / 8).collect();
        canvas.text(x0 as i64, (y0 + h * scale + 6) as i64, &label, 1, INK);
    }
    let png = canvas.png().map_err(|e| CtlError::Encode {
        what: "the grid",
        reason: e.to_string(),
    })?;
    std::fs::write(out, png).map_err(CtlError::write(out))?;
    Ok(format!(
        "wrote {} ({} images of split {split}, window {lo:.0}..{hi:.0})\n",
        out.display(),
        images.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctcluster_common::dataset::{SynthOptions, write_synthetic};

    #[tokio::test]
    async fn the_grid_shows_each_image_with_its_label() {
        let ds = StoreUrl::parse("memory://preview-test/ds").unwrap();
        let opts = SynthOptions {
            train: 20,
            test: 4,
            size: 28,
            seed: 3,
        };
        write_synthetic(&ds, opts).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("grid.png");
        let text = preview(ds.as_str(), "train", 10, Window::Auto, &out)
            .await
            .unwrap();
        assert!(text.contains("10 images"), "{text}");
        let decoder = png::Decoder::new(std::io::Cursor::new(std::fs::read(&out).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        // 8 tiles in the first row, 2 in the second; 28 px images scaled 4x.
        assert_eq!(info.width as usize, 8 * (112 + 8) + 8);
        assert_eq!(info.height as usize, 2 * (112 + 20 + 8) + 8);
        // Every tile holds an image: its pixels are not all one grey.
        let stride = info.width as usize * 3;
        for tile in 0..10 {
            let (x0, y0) = (8 + (tile % 8) * 120, 8 + (tile / 8) * 140);
            let greys: std::collections::BTreeSet<u8> = (0..112)
                .flat_map(|y| (0..112).map(move |x| (x, y)))
                .map(|(x, y)| buf[(y0 + y) * stride + (x0 + x) * 3])
                .collect();
            assert!(
                greys.len() > 10,
                "tile {tile} has {} grey levels",
                greys.len()
            );
        }
        assert!(
            preview(ds.as_str(), "nope", 4, Window::Auto, &out)
                .await
                .is_err()
        );
    }
}
