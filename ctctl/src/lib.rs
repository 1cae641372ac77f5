//! `ctctl`, ctcluster's command line, as a library: each command returns what it prints, so
//! tests can call the same code the binary runs.

// Every public item says what it is for (denied in CI, like every warning).
#![warn(missing_docs)]

pub mod certs;
pub mod cli;
pub mod connect;
pub mod dataset;
pub mod demo;
mod error;
pub mod evaluate;
pub mod explain;
pub mod ingest;
pub mod jobs;
pub mod model;
pub mod predict;
pub mod preview;
pub mod render;
pub mod report;
pub mod watch;

pub use connect::Target;
pub use error::CtlError;

/// The coordinator target from the global flags: TLS with the CA and a token (from
/// `CTCTL_TOKEN` or `--token-file`), or plain text with `--insecure`.
pub fn target_from(
    url: &str,
    ca: Option<&std::path::Path>,
    token_file: Option<&std::path::Path>,
    insecure: bool,
) -> Result<Target, CtlError> {
    if insecure {
        return Ok(Target::insecure(url));
    }
    let ca = ca.ok_or_else(|| {
        CtlError::Usage(
            "no CA certificate: pass --ca FILE or set CTCTL_CA (or --insecure for a plain-text coordinator)"
                .into(),
        )
    })?;
    let ca_pem = read_limited(ca, MAX_PEM_BYTES, "--ca")
        .map_err(|e| CtlError::Usage(format!("--ca {}: {e}", ca.display())))?;
    let token = match (std::env::var("CTCTL_TOKEN"), token_file) {
        (Ok(t), _) if !t.trim().is_empty() => t,
        (_, Some(f)) => read_limited(f, MAX_PEM_BYTES, "--token-file")
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| {
                CtlError::Usage(format!(
                    "--token-file {}: not a readable text file of at most {MAX_PEM_BYTES} bytes",
                    f.display()
                ))
            })?,
        _ => {
            return Err(CtlError::Usage(
                "no token: set CTCTL_TOKEN or pass --token-file FILE".into(),
            ));
        }
    };
    Ok(Target::secure(url, ca_pem, &token))
}

use cli::{CertsCommand, Cli, Command, DatasetCommand, Format, KeysCommand, ModelCommand};
use ctcluster_common::job::JobState;
use ctcluster_common::local_file::{MAX_PEM_BYTES, read_limited};

/// Runs one command; returns the text to print.
pub async fn run(cli: Cli) -> Result<String, CtlError> {
    let target = || {
        target_from(
            &cli.coordinator,
            cli.ca.as_deref(),
            cli.token_file.as_deref(),
            cli.insecure,
        )
    };
    match cli.command {
        Command::Submit {
            file,
            watch: follow,
            once,
        } => {
            let c = &target()?;
            let id = if once {
                jobs::submit_once(c, &file).await?
            } else {
                jobs::submit(c, &file).await?
            };
            if !follow {
                return Ok(id);
            }
            println!("{id}");
            let s = watch::watch(c, &id).await?;
            let text = render::status_text(&s);
            if render::job_state(s.state) == Some(JobState::Succeeded) {
                Ok(text)
            } else {
                Err(CtlError::JobDidNotSucceed {
                    id,
                    state: render::state_name(s.state).into(),
                    message: s.message,
                })
            }
        }
        Command::Status { job, output } => jobs::status(&target()?, &job, output).await,
        Command::List { output } => jobs::list(&target()?, output).await,
        Command::Cancel { job } => jobs::cancel(&target()?, &job).await,
        Command::Workers { output } => jobs::workers(&target()?, output).await,
        Command::Report { job, out } => report::report(&target()?, &job, &out).await,
        Command::Watch { job } => Ok(render::status_text(&watch::watch(&target()?, &job).await?)),
        Command::Dataset(d) => match d {
            DatasetCommand::FromNpz {
                file,
                out,
                classes,
                shard_rows,
                encrypt_key,
            } => dataset::from_npz(&file, &out, classes, shard_rows, encrypt_key.as_deref()).await,
            DatasetCommand::Synth {
                out,
                kind,
                train,
                test,
                size,
                seed,
                encrypt_key,
            } => dataset::synth(&out, kind, train, test, size, seed, encrypt_key.as_deref()).await,
            DatasetCommand::Inspect { url, output } => dataset::inspect(&url, output).await,
            DatasetCommand::Preview {
                url,
                out,
                split,
                count,
                window,
            } => preview::preview(&url, &split, count, window, &out).await,
        },
        Command::Model(ModelCommand::Show { url, output }) => model::show(&url, output)
            .await
            .map(|text| text.trim_end().to_string()),
        Command::Evaluate {
            model,
            dataset: ds,
            split,
            local,
            report_to,
            output,
            out,
        } => {
            let r = if local {
                evaluate::local(&model, &ds, &split).await?
            } else {
                evaluate::on_cluster(&target()?, &model, &ds, &split, report_to.as_deref()).await?
            };
            let mut text = match output {
                Format::Json => serde_json::to_string_pretty(&r).unwrap_or_default(),
                Format::Table => dataset::report_text(&r),
            };
            if let Some(dir) = out {
                std::fs::create_dir_all(&dir).map_err(CtlError::write(&dir))?;
                for (name, bytes) in report::evaluation_charts(&r)? {
                    let path = dir.join(name);
                    std::fs::write(&path, bytes).map_err(CtlError::write(&path))?;
                    if output == Format::Table {
                        text.push_str(&format!("\nwrote {}", path.display()));
                    }
                }
            }
            Ok(text)
        }
        Command::Predict {
            model,
            inputs,
            split,
            output,
            out,
        } => {
            let p = predict::predict(&model, &inputs, &split).await?;
            let text = predict::render(&p, output);
            let failed = p.predictions.iter().filter(|r| r.error.is_some()).count();
            if failed > 0 {
                eprintln!(
                    "{failed} of {} inputs have no prediction (see their error)",
                    p.predictions.len()
                );
            }
            match out {
                Some(path) => {
                    std::fs::write(&path, text).map_err(CtlError::write(&path))?;
                    Ok(format!(
                        "{} predictions written to {}",
                        p.predictions.len(),
                        path.display()
                    ))
                }
                None => Ok(text.trim_end().to_string()),
            }
        }
        Command::Explain {
            model,
            inputs,
            out,
            method,
            class,
            split,
            limit,
        } => {
            let method: ctcluster_common::model::Method = method.parse()?;
            let args = explain::ExplainArgs {
                model,
                inputs,
                out: out.clone(),
                method,
                class,
                split,
                limit,
            };
            let doc = explain::run(&args).await?;
            let failed = doc.images.iter().filter(|e| e.error.is_some()).count();
            let mut text = format!(
                "{} images explained by {} (layer {}) in {}",
                doc.images.len() - failed,
                doc.method,
                doc.layer,
                out.display()
            );
            for e in doc.images.iter().filter(|e| e.error.is_some()) {
                text.push_str(&format!(
                    "\n{}: {}",
                    e.input,
                    e.error.as_deref().unwrap_or("")
                ));
            }
            Ok(text)
        }
        Command::Demo(args) => demo::run(&args).await,
        Command::Ingest(source) => ingest::ingest(source).await,
        Command::Keys(KeysCommand::New { id, dir }) => dataset::new_key(&id, &dir),
        Command::Certs(CertsCommand::Init {
            dir,
            hosts,
            workers,
            aggregators,
            users,
        }) => certs::init(
            &dir,
            &certs::BundleSpec {
                hosts,
                workers,
                aggregators,
                users,
            },
        ),
    }
}
