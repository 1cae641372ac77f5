//! `ctctl dataset ...` and `ctctl evaluate`.

use std::path::Path;

use ctcluster_common::dataset::{
    HeadCtOptions, Manifest, SynthOptions, load_manifest, write_head_ct, write_synthetic_sealed,
};
use ctcluster_common::evaluate::EvalReport;
use ctcluster_common::seal::DataKey;
use ctcluster_common::storage::StoreUrl;

use crate::CtlError;
use crate::cli::{Format, SynthKind};
use crate::ingest::{IngestArgs, IngestSource};

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
    if let Some(e) = &m.encryption {
        out.push_str(&format!("sealed   {} with key {}\n", e.algorithm, e.key_id));
    }
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
    // A class histogram per split, bars scaled to the largest class.
    let most = m
        .splits
        .values()
        .flat_map(|s| s.per_class.iter().copied())
        .max()
        .unwrap_or(0)
        .max(1);
    let width = m.classes.iter().map(|c| c.len()).max().unwrap_or(0);
    for (name, split) in &m.splits {
        out.push_str(&format!("classes in {name}\n"));
        for (c, &n) in m.classes.iter().zip(&split.per_class) {
            let bar = "#".repeat(((n as f64 / most as f64) * 40.0).round() as usize);
            out.push_str(&format!("  {c:<width$}  {bar} {n}\n"));
        }
    }
    out
}

/// `ctctl dataset from-npz`: `ctctl ingest npz` (the one npz path, with its cleaning and
/// report) with the ingest defaults and these options.
pub async fn from_npz(
    file: &Path,
    out: &str,
    classes: Option<Vec<String>>,
    shard_rows: usize,
    encrypt_key: Option<&str>,
) -> Result<String, CtlError> {
    let args = IngestArgs {
        shard_rows,
        classes,
        encrypt_key: encrypt_key.map(String::from),
        ..IngestArgs::to(out)
    };
    crate::ingest::ingest(IngestSource::Npz {
        file: file.to_path_buf(),
        args,
    })
    .await
}

/// `ctctl dataset synth`.
#[allow(clippy::too_many_arguments)]
pub async fn synth(
    out: &str,
    kind: SynthKind,
    train: usize,
    test: usize,
    size: Option<u32>,
    seed: u64,
    encrypt_key: Option<&str>,
) -> Result<String, CtlError> {
    let url = StoreUrl::parse(out)?;
    let key = sealing_key(encrypt_key, &url)?;
    let m = match kind {
        SynthKind::HeadCt => {
            let opts = HeadCtOptions {
                train,
                test,
                size: size.unwrap_or(HeadCtOptions::default().size),
                seed,
            };
            write_head_ct(&url, opts, key).await?
        }
        SynthKind::Lesion => {
            let opts = SynthOptions {
                train,
                test,
                size: size.unwrap_or(SynthOptions::default().size),
                seed,
            };
            write_synthetic_sealed(&url, opts, key).await?
        }
        SynthKind::Patch => {
            let opts = SynthOptions {
                train,
                test,
                size: size.unwrap_or(SynthOptions::default().size),
                seed,
            };
            ctcluster_common::dataset::write_patches(&url, opts, key).await?
        }
    };
    Ok(describe(url.as_str(), &m))
}

fn sealing_key(id: Option<&str>, url: &StoreUrl) -> Result<Option<DataKey>, CtlError> {
    Ok(match id {
        Some(id) => Some(DataKey::from_env(id, &format!("dataset {}", url.as_str()))?),
        None => None,
    })
}

/// `ctctl keys new`: a random key in `dir/<id>.key`, readable by its owner only.
pub fn new_key(id: &str, dir: &Path) -> Result<String, CtlError> {
    let key = DataKey::generate(id)?;
    std::fs::create_dir_all(dir).map_err(CtlError::write(dir))?;
    let path = dir.join(format!("{id}.key"));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    use std::io::Write;
    options
        .open(&path)
        .and_then(|mut f| f.write_all(format!("{}\n", key.to_hex()).as_bytes()))
        .map_err(CtlError::write(&path))?;
    Ok(format!(
        "wrote {}\nset CT_KEYRING={} on ctctl, the coordinator and the workers, then\n  ctctl dataset from-npz FILE --out URL --encrypt-key {id}\n  or in a job spec: encryption: {{key_id: {id}}}\n",
        path.display(),
        dir.display()
    ))
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
    let opt = |v: Option<f64>| v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.4}"));
    match (r.roc_auc, r.roc_auc_ci95) {
        (Some(auc), Some([lo, hi])) => {
            out.push_str(&format!("roc_auc   {auc:.4} (95% CI {lo:.4} to {hi:.4})\n"))
        }
        (Some(auc), None) => out.push_str(&format!("roc_auc   {auc:.4}\n")),
        (None, _) => out.push_str("roc_auc   n/a\n"),
    }
    out.push_str(&format!("balanced  {}\n", opt(r.balanced_accuracy)));
    if r.classes.len() == 2 {
        out.push_str(&format!(
            "sensitivity {} (recall of {})\nspecificity {} (recall of {})\n",
            opt(r.sensitivity),
            r.classes[1],
            opt(r.specificity),
            r.classes[0]
        ));
    }
    out.push_str(&format!("ece       {} (15 bins)\n", opt(r.ece)));
    out.push_str("class          support  precision  recall     f1\n");
    for c in &r.per_class {
        out.push_str(&format!(
            "  {:<12}{:>7}  {:>9}  {:>6}  {:>6}\n",
            c.class,
            c.support,
            opt(c.precision),
            opt(c.recall),
            opt(c.f1)
        ));
    }
    out.push_str("confusion (rows: true class, columns: predicted)\n");
    for (name, row) in r.classes.iter().zip(&r.confusion) {
        let cells: Vec<String> = row.iter().map(|n| format!("{n:>6}")).collect();
        out.push_str(&format!("  {name:<12}{}\n", cells.join("")));
    }
    for note in &r.notes {
        out.push_str(&format!("note: {note}\n"));
    }
    out
}
