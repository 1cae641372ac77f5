//! `ctctl`: parse, run, print; errors go to stderr with an exit code by kind.

use clap::Parser;

#[tokio::main]
async fn main() {
    ctcluster_common::telemetry::init_logging("warn");
    let cli = ctctl::cli::Cli::parse();
    match ctctl::run(cli).await {
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
