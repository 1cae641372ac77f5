//! `ctctl dataset ...` and `ctctl evaluate`.

use std::path::Path;

use ctcluster_common::dataset::{
    Manifest, SynthOptions, convert_npz, load_manifest, write_synthetic,
};
use ctcluster_common::evaluate::EvalReport;
use ctcluster_common::storage::StoreUrl;

use crate::CtlError;
use crate::cli::Format;

/// A dataset summary: shape, classes, rows per split and class.
pub fn describe(url: &str, m: &Manifest) -> String {
    let mut out = format!(
        "dataset  {url}\nimages   {}x{}x{} {:?}\nclasses  {}\npixels   mean {:.2} std {:.2} min {} max {}\n",
        m.image.height,
        m.image.width,
        m.image.channels,
        m.image.pixel_type,
        m.classes.join(", "),
        m.pixel_stats.mean,
        m.pixel_stats.std,
        m.pixel_stats.min,
        m.pixel_stats.max
    );
    for (name, split) in &m.splits {
        let hist: Vec<String> = m
            .classes
            .iter()
            .zip(&split.per_class)
            .map(|(c, n)| format!("{c} {n}"))
            .collect();
        out.push_str(&format!(
            "split    {name:<6} {:>7} rows in {} shards  ({})\n",
            split.rows,
            split.shards.len(),
            hist.join(", ")
        ));
    }
    out
}

/// `ctctl dataset from-npz`.
pub async fn from_npz(
    file: &Path,
    out: &str,
    classes: Option<Vec<String>>,
    shard_rows: usize,
) -> Result<String, CtlError> {
    let url = StoreUrl::parse(out)?;
    let m = convert_npz(file, &url, classes, shard_rows).await?;
    Ok(describe(url.as_str(), &m))
}

/// `ctctl dataset synth`.
pub async fn synth(out: &str, opts: SynthOptions) -> Result<String, CtlError> {
    let url = StoreUrl::parse(out)?;
    let m = write_synthetic(&url, opts).await?;
    Ok(describe(url.as_str(), &m))
}

/// `ctctl dataset inspect`.
pub async fn inspect(url: &str, format: Format) -> Result<String, CtlError> {
    let store = StoreUrl::parse(url)?;
    let m = load_manifest(&store).await?;
    Ok(match format {
        Format::Json => serde_json::to_string_pretty(&m).unwrap_or_default(),
        Format::Table => describe(store.as_str(), &m),
    })
}

/// `ctctl evaluate` output.
pub fn report_text(r: &EvalReport) -> String {
    let mut out = format!(
        "split     {}\nsamples   {}\naccuracy  {:.4}\nloss      {:.4}\n",
        r.split, r.samples, r.accuracy, r.loss
    );
    if let Some(auc) = r.roc_auc {
        out.push_str(&format!("roc_auc   {auc:.4}\n"));
    }
    out.push_str("confusion (rows: true class, columns: predicted)\n");
    for (name, row) in r.classes.iter().zip(&r.confusion) {
        let cells: Vec<String> = row.iter().map(|n| format!("{n:>6}")).collect();
        out.push_str(&format!("  {name:<12}{}\n", cells.join("")));
    }
    out
}
