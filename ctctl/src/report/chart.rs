//! Line charts and the confusion-matrix heat map, drawn on a [`Canvas`].

use super::canvas::{Canvas, GRID, INK, Rgb, WHITE};

/// Blue, orange, green, red: the series colours, in order.
pub const PALETTE: [Rgb; 4] = [[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40]];

/// One line (and/or markers) of a chart.
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Colour.
    pub color: Rgb,
    /// (x, y) points, in x order.
    pub points: Vec<(f64, f64)>,
    /// Line width in pixels (0: no line).
    pub line: i64,
    /// Draw a square at each point.
    pub markers: bool,
}

/// A chart of series against a shared x axis.
pub struct LineChart {
    /// Title above the plot.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// The data.
    pub series: Vec<Series>,
    /// Y values are clamped into this range when padding the axis (e.g. 0..1 for accuracy).
    pub y_bounds: Option<(f64, f64)>,
    /// X ticks on whole numbers only (epochs).
    pub integer_x: bool,
}

const WIDTH: usize = 900;
const HEIGHT: usize = 520;
const LEFT: i64 = 90;
const RIGHT: i64 = 30;
const TOP: i64 = 60;
const BOTTOM: i64 = 70;

/// Round tick positions covering [lo, hi], about `n` of them.
fn ticks(lo: f64, hi: f64, n: usize, min_step: f64) -> (Vec<f64>, f64) {
    let span = (hi - lo).max(1e-12);
    let raw = (span / n.max(1) as f64).max(min_step);
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() * step;
    let mut out = Vec::new();
    let mut v = first;
    while v <= hi + step * 1e-9 {
        out.push(if v.abs() < step * 1e-9 { 0.0 } else { v });
        v += step;
    }
    (out, step)
}

fn tick_label(v: f64, step: f64) -> String {
    let decimals = (0..6)
        .find(|d| {
            let s = step * 10f64.powi(*d);
            (s - s.round()).abs() < 1e-6
        })
        .unwrap_or(6) as usize;
    format!("{v:.decimals$}")
}

impl LineChart {
    /// Draws the chart; with no points at all it says so.
    pub fn render(&self) -> Canvas {
        let mut c = Canvas::new(WIDTH, HEIGHT, WHITE);
        c.text(LEFT, 20, &self.title, 2, INK);
        let (pw, ph) = (WIDTH as i64 - LEFT - RIGHT, HEIGHT as i64 - TOP - BOTTOM);
        let all: Vec<(f64, f64)> = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        if all.is_empty() {
            c.stroke_rect(LEFT, TOP, pw, ph, GRID);
            c.text(LEFT + 20, TOP + ph / 2, "no data yet", 2, INK);
            return c;
        }
        let (mut x0, mut x1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), (x, _)| {
            (a.min(*x), b.max(*x))
        });
        let (mut y0, mut y1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), (_, y)| {
            (a.min(*y), b.max(*y))
        });
        if x1 - x0 < 1e-9 {
            x0 -= 0.5;
            x1 += 0.5;
        }
        let pad = ((y1 - y0) * 0.08).max(1e-3);
        y0 -= pad;
        y1 += pad;
        if let Some((lo, hi)) = self.y_bounds {
            y0 = y0.max(lo);
            y1 = y1.min(hi);
        }
        let px = |x: f64| LEFT as f64 + (x - x0) / (x1 - x0) * pw as f64;
        let py = |y: f64| (TOP + ph) as f64 - (y - y0) / (y1 - y0) * ph as f64;

        let (yt, ystep) = ticks(y0, y1, 6, 0.0);
        for v in &yt {
            let y = py(*v).round() as i64;
            c.fill_rect(LEFT, y, pw, 1, GRID);
            let label = tick_label(*v, ystep);
            c.text(
                LEFT - 8 - Canvas::text_width(&label, 1),
                y - 4,
                &label,
                1,
                INK,
            );
        }
        let (xt, xstep) = ticks(x0, x1, 8, if self.integer_x { 1.0 } else { 0.0 });
        for v in &xt {
            let x = px(*v).round() as i64;
            c.fill_rect(x, TOP, 1, ph, GRID);
            let label = tick_label(*v, xstep);
            c.text(
                x - Canvas::text_width(&label, 1) / 2,
                TOP + ph + 8,
                &label,
                1,
                INK,
            );
        }
        c.stroke_rect(LEFT, TOP, pw, ph + 1, INK);
        c.text(
            LEFT + pw / 2 - Canvas::text_width(&self.x_label, 2) / 2,
            HEIGHT as i64 - 30,
            &self.x_label,
            2,
            INK,
        );
        c.text(8, TOP - 22, &self.y_label, 1, INK);

        let mut drawn = Vec::new();
        for s in &self.series {
            let pts: Vec<(f64, f64)> = s
                .points
                .iter()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .map(|&(x, y)| (px(x), py(y.clamp(y0, y1))))
                .collect();
            if s.line > 0 {
                for w in pts.windows(2) {
                    c.line(w[0], w[1], s.color, s.line);
                }
            }
            if s.markers {
                for &(x, y) in &pts {
                    c.fill_rect(x.round() as i64 - 4, y.round() as i64 - 4, 9, 9, s.color);
                }
            }
            // Points along the lines too, so the legend avoids crossing them.
            for w in pts.windows(2) {
                drawn.extend((0..=8).map(|i| {
                    let t = f64::from(i) / 8.0;
                    (
                        w[0].0 + (w[1].0 - w[0].0) * t,
                        w[0].1 + (w[1].1 - w[0].1) * t,
                    )
                }));
            }
            drawn.extend(pts);
        }
        // Legend, top right inside the plot.
        let width = self
            .series
            .iter()
            .map(|s| Canvas::text_width(&s.name, 1))
            .max()
            .unwrap_or(0)
            + 40;
        let height = 16 * self.series.len() as i64 + 8;
        let (lx, ly) = legend_corner(&drawn, (LEFT, TOP, pw, ph), (width, height));
        c.fill_rect(lx, ly, width, height, WHITE);
        c.stroke_rect(lx, ly, width, height, GRID);
        for (i, s) in self.series.iter().enumerate() {
            let y = ly + 8 + 16 * i as i64;
            c.fill_rect(lx + 8, y + 2, 20, 4, s.color);
            c.text(lx + 34, y, &s.name, 1, INK);
        }
        c
    }
}

/// The inside corner of the plot where a legend of `size` covers the fewest drawn points.
fn legend_corner(
    points: &[(f64, f64)],
    plot: (i64, i64, i64, i64),
    size: (i64, i64),
) -> (i64, i64) {
    let (left, top, w, h) = plot;
    let (lw, lh) = size;
    let corners = [
        (left + w - lw - 10, top + 10),
        (left + 10, top + 10),
        (left + w - lw - 10, top + h - lh - 10),
        (left + 10, top + h - lh - 10),
    ];
    let covered = |(x, y): (i64, i64)| {
        points
            .iter()
            .filter(|(px, py)| {
                (x as f64 - 6.0..(x + lw) as f64 + 6.0).contains(px)
                    && (y as f64 - 6.0..(y + lh) as f64 + 6.0).contains(py)
            })
            .count()
    };
    corners
        .into_iter()
        .min_by_key(|c| covered(*c))
        .unwrap_or(corners[0])
}

/// The confusion matrix as a heat map: rows are the true class, columns the predicted one;
/// each cell shows its count and is shaded by its share of the row.
pub fn confusion_chart(title: &str, classes: &[String], counts: &[Vec<u64>]) -> Canvas {
    let n = counts.len().max(1) as i64;
    let cell = (420 / n).clamp(24, 160);
    let label_w = classes
        .iter()
        .map(|c| Canvas::text_width(c, 2))
        .max()
        .unwrap_or(0)
        .max(Canvas::text_width("true", 2))
        + 30;
    let (left, top) = (label_w, 110);
    let width = (left + cell * n + 40).max(Canvas::text_width(title, 2) + 40) as usize;
    let height = (top + cell * n + 70) as usize;
    let mut c = Canvas::new(width, height, WHITE);
    c.text(20, 20, title, 2, INK);
    c.text(
        left + cell * n / 2 - Canvas::text_width("predicted", 2) / 2,
        56,
        "predicted",
        2,
        INK,
    );
    c.text(10, top - 24, "true", 2, INK);
    for (i, row) in counts.iter().enumerate() {
        let total: u64 = row.iter().sum();
        for (j, &v) in row.iter().enumerate() {
            let share = if total > 0 {
                v as f64 / total as f64
            } else {
                0.0
            };
            let shade = |full: u8| (255.0 - (255.0 - f64::from(full)) * share).round() as u8;
            let fill = [shade(8), shade(81), shade(156)];
            let (x, y) = (left + j as i64 * cell, top + i as i64 * cell);
            c.fill_rect(x, y, cell, cell, fill);
            c.stroke_rect(x, y, cell, cell, GRID);
            let text = v.to_string();
            let ink = if share > 0.5 { WHITE } else { INK };
            let scale = if cell >= 80 { 2 } else { 1 };
            c.text(
                x + cell / 2 - Canvas::text_width(&text, scale) / 2,
                y + cell / 2 - 4 * scale,
                &text,
                scale,
                ink,
            );
        }
        let name = classes.get(i).map_or("?", String::as_str);
        c.text(10, top + i as i64 * cell + cell / 2 - 8, name, 2, INK);
    }
    for j in 0..counts.len() {
        let name = classes.get(j).map_or("?", String::as_str);
        let scale = if Canvas::text_width(name, 2) < cell {
            2
        } else {
            1
        };
        let x = left + j as i64 * cell + cell / 2 - Canvas::text_width(name, scale) / 2;
        c.text(x, top - 8 - 8 * scale, name, scale, INK);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        let (t, step) = ticks(0.23, 0.71, 6, 0.0);
        assert_eq!(step, 0.1);
        assert!((t[0] - 0.3).abs() < 1e-9 && (t.last().unwrap() - 0.7).abs() < 1e-9);
        assert_eq!(tick_label(0.25, 0.05), "0.25");
        assert_eq!(tick_label(3.0, 1.0), "3");
        let (t, _) = ticks(0.0, 5.0, 8, 0.0);
        assert_eq!(t.first(), Some(&0.0));
        let (t, step) = ticks(1.0, 5.0, 8, 1.0);
        assert_eq!((t, step), (vec![1.0, 2.0, 3.0, 4.0, 5.0], 1.0));
    }
}
