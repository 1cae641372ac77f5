//! `ctctl report JOB --out DIR`: PNG charts of a job (loss and accuracy per epoch, the
//! validation confusion matrix) and a self-contained HTML page showing them.

pub(crate) mod canvas;
mod chart;
mod evaluation;
mod html;

pub use evaluation::evaluation_charts;

use std::path::Path;

use ctcluster_proto as pb;

use crate::CtlError;
use crate::connect::{Target, connect};
use chart::{LineChart, PALETTE, Series, confusion_chart};

/// The report's files: name and bytes.
pub type Files = Vec<(&'static str, Vec<u8>)>;

/// Steps in one epoch, from the first epoch end (or the job's plan before that).
fn steps_per_epoch(r: &pb::JobReport) -> f64 {
    let planned = r
        .status
        .as_ref()
        .map_or(1.0, |s| s.total_steps as f64 / f64::from(s.epochs.max(1)));
    r.history
        .first()
        .map(|h| h.step as f64 / f64::from(h.epoch + 1))
        .filter(|s| *s > 0.0)
        .unwrap_or(planned)
        .max(1.0)
}

fn per_epoch(r: &pb::JobReport, f: impl Fn(&pb::JobMetrics) -> Option<f64>) -> Vec<(f64, f64)> {
    r.history
        .iter()
        .filter_map(|h| Some((f64::from(h.epoch + 1), f(h.metrics.as_ref()?)?)))
        .collect()
}

fn loss_chart(r: &pb::JobReport) -> LineChart {
    let spe = steps_per_epoch(r);
    LineChart {
        title: "Loss".into(),
        x_label: "epoch".into(),
        y_label: "cross-entropy".into(),
        series: vec![
            Series {
                name: "train, per step".into(),
                color: [158, 202, 225],
                points: r
                    .loss_curve
                    .iter()
                    .map(|p| ((p.step + 1) as f64 / spe, p.loss))
                    .collect(),
                line: 1,
                markers: false,
            },
            Series {
                name: "train, epoch mean".into(),
                color: PALETTE[0],
                points: per_epoch(r, |m| m.train_loss),
                line: 2,
                markers: true,
            },
            Series {
                name: "validation".into(),
                color: PALETTE[1],
                points: per_epoch(r, |m| m.val_loss),
                line: 2,
                markers: true,
            },
        ],
        y_bounds: Some((0.0, f64::MAX)),
        integer_x: false,
    }
}

fn accuracy_chart(r: &pb::JobReport) -> LineChart {
    LineChart {
        title: "Accuracy".into(),
        x_label: "epoch".into(),
        y_label: "accuracy".into(),
        series: vec![
            Series {
                name: "train".into(),
                color: PALETTE[0],
                points: per_epoch(r, |m| m.train_accuracy),
                line: 2,
                markers: true,
            },
            Series {
                name: "validation".into(),
                color: PALETTE[1],
                points: per_epoch(r, |m| m.val_accuracy),
                line: 2,
                markers: true,
            },
        ],
        y_bounds: Some((0.0, 1.0)),
        integer_x: true,
    }
}

/// `confusion[true][predicted]`, when the report has a matrix of the right size.
fn confusion(r: &pb::JobReport) -> Option<Vec<Vec<u64>>> {
    let n = r.classes.len();
    (n > 0 && r.val_confusion.len() == n * n)
        .then(|| r.val_confusion.chunks(n).map(<[u64]>::to_vec).collect())
}

fn png(c: &canvas::Canvas) -> Result<Vec<u8>, CtlError> {
    c.png().map_err(|e| CtlError::Encode {
        what: "a chart",
        reason: e.to_string(),
    })
}

/// Draws the charts and the page.
pub fn build(r: &pb::JobReport) -> Result<Files, CtlError> {
    let loss = png(&loss_chart(r).render())?;
    let accuracy = png(&accuracy_chart(r).render())?;
    let matrix = match confusion(r) {
        Some(m) => Some(png(&confusion_chart(
            "Validation confusion matrix",
            &r.classes,
            &m,
        ))?),
        None => None,
    };
    let page = html::page(r, &loss, &accuracy, matrix.as_deref());
    let mut files: Files = vec![("loss.png", loss), ("accuracy.png", accuracy)];
    if let Some(m) = matrix {
        files.push(("confusion.png", m));
    }
    files.push(("index.html", page.into_bytes()));
    Ok(files)
}

/// Fetches a job's report from the coordinator and writes it under `out`; returns what it
/// wrote.
pub async fn report(coordinator: &Target, job: &str, out: &Path) -> Result<String, CtlError> {
    let mut c = connect(coordinator).await?;
    let r = c
        .get_job_report(pb::GetJobRequest {
            job_id: job.to_string(),
        })
        .await?
        .into_inner();
    let files = build(&r)?;
    std::fs::create_dir_all(out).map_err(CtlError::write(out))?;
    let mut text = String::new();
    for (name, bytes) in &files {
        let path = out.join(name);
        std::fs::write(&path, bytes).map_err(CtlError::write(&path))?;
        text.push_str(&format!("wrote {}\n", path.display()));
    }
    if confusion(&r).is_none() {
        text.push_str("no confusion matrix yet: the job has not evaluated a validation split\n");
    }
    Ok(text)
}
