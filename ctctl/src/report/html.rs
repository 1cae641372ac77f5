//! The report page: one HTML file with the charts embedded, readable offline.

use base64::Engine;
use ctcluster_proto as pb;

use crate::render::state_name;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn img(png: &[u8], alt: &str) -> String {
    format!(
        "<img alt=\"{alt}\" src=\"data:image/png;base64,{}\">",
        base64::engine::general_purpose::STANDARD.encode(png)
    )
}

fn num(v: Option<f64>) -> String {
    v.map_or("&ndash;".into(), |v| format!("{v:.4}"))
}

/// The page for a job's report.
pub fn page(r: &pb::JobReport, loss: &[u8], accuracy: &[u8], confusion: Option<&[u8]>) -> String {
    let s = r.status.clone().unwrap_or_default();
    let m = s.metrics.unwrap_or_default();
    let name = escape(&s.name);
    let mut rows = String::new();
    let mut row = |k: &str, v: String| rows.push_str(&format!("<tr><th>{k}</th><td>{v}</td></tr>"));
    row("job", escape(&s.id));
    row("state", escape(state_name(s.state)));
    if !s.message.is_empty() {
        row("message", escape(&s.message));
    }
    row(
        "progress",
        format!(
            "step {} of {}, epoch {} of {}",
            s.step,
            s.total_steps,
            (s.epoch + 1).min(s.epochs),
            s.epochs
        ),
    );
    row("validation accuracy", num(m.val_accuracy));
    row("validation loss", num(m.val_loss));
    row("training loss", num(m.train_loss));
    row("throughput", format!("{:.0} images/s", s.images_per_sec));
    if !s.model.is_empty() {
        row("model", escape(&s.model));
    }
    if !s.checkpoint.is_empty() {
        row("checkpoint", escape(&s.checkpoint));
    }
    let mut epochs = String::new();
    for h in &r.history {
        let hm = h.metrics.unwrap_or_default();
        epochs.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            h.epoch + 1,
            h.step,
            num(hm.train_loss),
            num(hm.train_accuracy),
            num(hm.val_loss),
            num(hm.val_accuracy)
        ));
    }
    let matrix = confusion.map_or_else(
        || "<p>No validation split has been evaluated yet.</p>".to_string(),
        |png| img(png, "validation confusion matrix"),
    );
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>ctcluster report: {name}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 960px; color: #212529; }}
table {{ border-collapse: collapse; margin-bottom: 1.5rem; }}
th, td {{ border: 1px solid #dee2e6; padding: .3rem .7rem; text-align: left; }}
img {{ max-width: 100%; border: 1px solid #dee2e6; margin-bottom: 1.5rem; }}
</style></head>
<body>
<h1>Training report: {name}</h1>
<table>{rows}</table>
<h2>Loss</h2>
{loss}
<h2>Accuracy</h2>
{accuracy}
<h2>Validation confusion matrix</h2>
<p>Rows are the true class, columns the predicted class; shading is the share of the row.</p>
{matrix}
<h2>Per epoch</h2>
<table><tr><th>epoch</th><th>step</th><th>train loss</th><th>train accuracy</th><th>validation loss</th><th>validation accuracy</th></tr>{epochs}</table>
</body></html>
"#,
        loss = img(loss, "loss curves"),
        accuracy = img(accuracy, "accuracy curves"),
    )
}
