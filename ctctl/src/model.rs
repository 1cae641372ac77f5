//! `ctctl model show`: a model's card (what it is, where it came from, how it scored), with the
//! weights checked against the sha256 the card records.

use ctcluster_common::card::{MetricsSummary, ModelCard, load_card, load_model_file};

use crate::CtlError;
use crate::cli::Format;
use crate::render::safe;

/// Prints the card of the model at `url` (its folder, weights or card) in `format`, then checks
/// the weights against it: an error (after the card) when they do not match.
pub async fn show(url: &str, format: Format) -> Result<String, CtlError> {
    let card = load_card(url).await?;
    let text = match format {
        Format::Json => serde_json::to_string_pretty(&card).unwrap_or_default() + "\n",
        Format::Table => card_text(&card),
    };
    match load_model_file(url).await {
        Ok(_) => Ok(match format {
            Format::Json => text,
            Format::Table => text + "weights    match the card's sha256\n",
        }),
        Err(e) => {
            print!("{text}");
            Err(e.into())
        }
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{v:.4}"))
}

fn metrics_line(m: &MetricsSummary) -> String {
    let ci = m
        .roc_auc_ci95
        .map(|[lo, hi]| format!(" (95% CI {lo:.4} to {hi:.4})"))
        .unwrap_or_default();
    let mut line = format!(
        "split {} ({} images): accuracy {:.4}  auc {}{ci}  balanced {}  loss {:.4}  ece {}",
        safe(&m.split),
        m.samples,
        m.accuracy,
        opt(m.roc_auc),
        opt(m.balanced_accuracy),
        m.loss,
        opt(m.ece)
    );
    if m.sensitivity.is_some() || m.specificity.is_some() {
        line.push_str(&format!(
            "  sensitivity {}  specificity {}",
            opt(m.sensitivity),
            opt(m.specificity)
        ));
    }
    line
}

/// The card as a person reads it: every field, one line each (the spec last, indented).
pub fn card_text(c: &ModelCard) -> String {
    let m = &c.model;
    let arch = match &m.resnet {
        Some(r) => format!(
            "{} (blocks {:?}, width {}, norm {})",
            m.name,
            r.blocks,
            r.width,
            serde_json::to_value(r.norm)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        ),
        None => m.name.clone(),
    };
    let mut out = format!(
        "model      {arch}, {} parameters, dropout {}\n",
        m.num_params(),
        m.dropout
    );
    out.push_str(&format!(
        "input      {} x {} x {} channel(s), normalised (x - {}) / {}{}\n",
        m.height,
        m.width,
        m.channels,
        m.norm_mean,
        m.norm_std,
        m.input
            .window
            .map(|w| format!(", window centre {} width {}", w.center, w.width))
            .unwrap_or_default()
    ));
    let classes: Vec<String> = c.classes.iter().map(|s| safe(s)).collect();
    out.push_str(&format!("classes    {}\n", classes.join(", ")));
    out.push_str(&format!(
        "trained    job {} , {} steps, {} epochs, ctcluster {}\n",
        safe(&c.job_id),
        c.step.0,
        c.epochs,
        safe(&c.ctcluster_version)
    ));
    let d = &c.dataset;
    out.push_str(&format!(
        "dataset    {} (manifest sha256 {})\n           source {}; trained on {}, validated on {}\n",
        safe(&d.url),
        d.manifest_sha256,
        safe(&d.source),
        safe(&d.train_split),
        safe(&d.validation)
    ));
    match &d.deidentification {
        Some(x) => out.push_str(&format!(
            "de-identified  {}; pseudonym key fingerprint {}\n",
            safe(&x.profile),
            safe(&x.key_fingerprint)
        )),
        None => out.push_str("de-identified  not recorded (not a DICOM ingest with a key)\n"),
    }
    match &c.selection {
        Some(s) => {
            out.push_str(&format!(
                "selection  best {} = {:.4} after epoch {} of {} trained\n",
                s.metric.as_str(),
                s.value,
                s.epoch + 1,
                s.epochs_trained
            ));
            if let Some(why) = &s.stopped_early {
                out.push_str(&format!("           {}\n", safe(why)));
            }
        }
        None => out.push_str("selection  none: the last epoch's weights\n"),
    }
    match &c.validation {
        Some(v) => out.push_str(&format!("validation {}\n", metrics_line(v))),
        None => out.push_str("validation n/a\n"),
    }
    match &c.test {
        Some(t) => out.push_str(&format!("test       {}\n", metrics_line(t))),
        None => out.push_str("test       n/a (the dataset has no test split)\n"),
    }
    out.push_str(&format!(
        "sha256     {} (model.safetensors)\n",
        c.weights_sha256
    ));
    out.push_str("spec\n");
    for line in c.spec_yaml.lines() {
        out.push_str(&format!("  {}\n", safe(line)));
    }
    out
}
