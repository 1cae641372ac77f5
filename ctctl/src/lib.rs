//! `ctctl`, ctcluster's command line, as a library: each command returns what it prints, so
//! tests can call the same code the binary runs.

pub mod cli;
pub mod connect;
pub mod dataset;
pub mod demo;
mod error;
pub mod jobs;
pub mod render;
pub mod report;
pub mod watch;

pub use error::CtlError;

use cli::{Cli, Command, DatasetCommand, Format};
use ctcluster_common::dataset::SynthOptions;

/// Runs one command; returns the text to print.
pub async fn run(cli: Cli) -> Result<String, CtlError> {
    let c = &cli.coordinator;
    match cli.command {
        Command::Submit {
            file,
            watch: follow,
        } => {
            let id = jobs::submit(c, &file).await?;
            if !follow {
                return Ok(id);
            }
            println!("{id}");
            let s = watch::watch(c, &id).await?;
            let text = render::status_text(&s);
            if render::state_name(s.state) == "succeeded" {
                Ok(text)
            } else {
                Err(CtlError::JobDidNotSucceed {
                    id,
                    state: render::state_name(s.state).into(),
                    message: s.message,
                })
            }
        }
        Command::Status { job, output } => jobs::status(c, &job, output).await,
        Command::List { output } => jobs::list(c, output).await,
        Command::Cancel { job } => jobs::cancel(c, &job).await,
        Command::Workers { output } => jobs::workers(c, output).await,
        Command::Report { job, out } => report::report(c, &job, &out).await,
        Command::Watch { job } => Ok(render::status_text(&watch::watch(c, &job).await?)),
        Command::Dataset(d) => match d {
            DatasetCommand::FromNpz {
                file,
                out,
                classes,
                shard_rows,
            } => dataset::from_npz(&file, &out, classes, shard_rows).await,
            DatasetCommand::Synth {
                out,
                train,
                test,
                size,
                seed,
            } => {
                dataset::synth(
                    &out,
                    SynthOptions {
                        train,
                        test,
                        size,
                        seed,
                    },
                )
                .await
            }
            DatasetCommand::Inspect { url, output } => dataset::inspect(&url, output).await,
        },
        Command::Evaluate {
            model,
            dataset: ds,
            split,
            output,
        } => {
            let r = ctcluster_common::evaluate::evaluate(&model, &ds, &split).await?;
            Ok(match output {
                Format::Json => serde_json::to_string_pretty(&r).unwrap_or_default(),
                Format::Table => dataset::report_text(&r),
            })
        }
        Command::Demo(args) => demo::run(&args).await,
    }
}
