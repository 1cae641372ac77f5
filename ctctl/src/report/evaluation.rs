//! `ctctl evaluate --out DIR`: the reliability diagram and the ROC curve as PNGs.

use ctcluster_common::evaluate::EvalReport;

use super::chart::{LineChart, PALETTE, Series};
use super::{Files, png};
use crate::CtlError;

fn diagonal(name: &str) -> Series {
    Series {
        name: name.into(),
        color: [170, 170, 170],
        points: vec![(0.0, 0.0), (1.0, 1.0)],
        line: 1,
        markers: false,
    }
}

/// `reliability.png` always; `roc.png` for two-class models whose split holds both classes.
pub fn evaluation_charts(r: &EvalReport) -> Result<Files, CtlError> {
    let ece = r.ece.map_or_else(|| "n/a".into(), |e| format!("{e:.3}"));
    let reliability = LineChart {
        title: format!("Reliability, split {} (ECE {ece})", r.split),
        x_label: "confidence (top probability)".into(),
        y_label: "accuracy".into(),
        series: vec![
            diagonal("perfect calibration"),
            Series {
                name: "model, per bin".into(),
                color: PALETTE[0],
                points: r.reliability.iter().map(|&(c, a, _)| (c, a)).collect(),
                line: 2,
                markers: true,
            },
        ],
        y_bounds: Some((0.0, 1.0)),
        integer_x: false,
    };
    let mut files = vec![("reliability.png", png(&reliability.render())?)];
    if let Some(curve) = &r.roc_curve {
        let auc = r
            .roc_auc
            .map_or_else(|| "n/a".into(), |a| format!("{a:.3}"));
        let ci = r
            .roc_auc_ci95
            .map_or_else(String::new, |[lo, hi]| format!(", 95% CI {lo:.3}-{hi:.3}"));
        let positive = r.classes.get(1).cloned().unwrap_or_default();
        let roc = LineChart {
            title: format!("ROC, {positive} (AUC {auc}{ci})"),
            x_label: "false-positive rate (1 - specificity)".into(),
            y_label: "true-positive rate (sensitivity)".into(),
            series: vec![
                diagonal("chance"),
                Series {
                    name: "model".into(),
                    color: PALETTE[3],
                    points: curve.clone(),
                    line: 2,
                    markers: false,
                },
            ],
            y_bounds: Some((0.0, 1.0)),
            integer_x: false,
        };
        files.push(("roc.png", png(&roc.render())?));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(roc: Option<Vec<(f64, f64)>>) -> EvalReport {
        EvalReport {
            split: "test".into(),
            samples: 4,
            accuracy: 0.75,
            loss: 0.5,
            roc_auc: roc.as_ref().map(|_| 0.75),
            confusion: vec![vec![1, 1], vec![0, 2]],
            classes: vec!["normal".into(), "pneumonia".into()],
            balanced_accuracy: Some(0.75),
            per_class: Vec::new(),
            sensitivity: Some(1.0),
            specificity: Some(0.5),
            roc_auc_ci95: None,
            ece: Some(0.1),
            reliability: vec![(0.6, 0.5, 2), (0.9, 1.0, 2)],
            roc_curve: roc,
            notes: Vec::new(),
        }
    }

    #[test]
    fn the_roc_chart_comes_only_with_a_curve() {
        let both =
            evaluation_charts(&report(Some(vec![(0.0, 0.0), (0.5, 1.0), (1.0, 1.0)]))).unwrap();
        let names: Vec<_> = both.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["reliability.png", "roc.png"]);
        assert!(both.iter().all(|(_, png)| &png[1..4] == b"PNG"));
        let one = evaluation_charts(&report(None)).unwrap();
        assert_eq!(one.len(), 1);
    }
}
