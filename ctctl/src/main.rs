//! `ctctl`: parse, run, print; errors go to stderr with an exit code by kind.

use clap::Parser;

#[tokio::main]
async fn main() {
    ctcluster_common::alloc::keep_freed_memory();
    let telemetry = ctcluster_common::telemetry::init("ctctl", "warn");
    let cli = ctctl::cli::Cli::parse();
    if cli.insecure {
        eprintln!(
            "ctctl: warning: --insecure: plain text, no token; use only on a trusted network"
        );
    }
    let result = ctctl::run(cli).await;
    telemetry.shutdown().await;
    match result {
        Ok(text) => {
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
        }
        Err(e) => {
            eprintln!("ctctl: {e}");
            std::process::exit(e.exit_code());
        }
    }
}
