//! Logging setup shared by the binaries: human-readable logs on stderr, filtered by `RUST_LOG`.

/// Installs the stderr log subscriber (once; later calls do nothing).
pub fn init_logging(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
