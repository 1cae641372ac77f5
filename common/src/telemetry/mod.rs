//! Logs and traces for the three binaries.
//!
//! Human-readable logs always go to stderr, filtered by `RUST_LOG`. Traces are exported over
//! OTLP/gRPC only when the standard variables ask for it (`OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`,
//! `OTEL_BSP_*` are honoured). Trace spans are `DEBUG` spans with the target [`TRACE_TARGET`]:
//! when nothing is exported no layer enables them, so they cost a disabled-callsite check.

mod otel;
mod propagate;

use std::time::Duration;

use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub use propagate::{
    TraceCarrier, carrier_from_metadata, carrier_of, carrier_to_metadata, child_of_carrier,
};

/// The target of every span that belongs to a job's trace.
pub const TRACE_TARGET: &str = "ctcluster::trace";

/// How long exiting waits for the last spans to reach the collector.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// What [`init`] installed; call [`Telemetry::shutdown`] before exiting so the last spans are
/// exported.
#[must_use = "shut telemetry down before exiting, or the last spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are being exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Flushes and stops the exporter (off the async threads; the export itself needs the
    /// runtime that is still running).
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            let done =
                tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(FLUSH_TIMEOUT))
                    .await;
            if let Ok(Err(e)) = done {
                eprintln!("warning: could not flush traces: {e}");
            }
        }
    }
}

/// Installs the global subscriber: stderr logs filtered by `RUST_LOG` (else `default_filter`),
/// plus the OTLP trace exporter when configured. `service` names the process in traces unless
/// `OTEL_SERVICE_NAME` is set. Must be called inside a tokio runtime. Later calls install
/// nothing and export nothing.
pub fn init(service: &str, default_filter: &str) -> Telemetry {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let provider = match otel::provider_from_env(service) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("warning: traces will not be exported: {e}");
            None
        }
    };
    let traces = provider.as_ref().map(|p| {
        use opentelemetry::trace::TracerProvider as _;
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("ctcluster"))
            .with_filter(tracing_subscriber::filter::filter_fn(otel::exported))
    });
    match tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()
    {
        Ok(()) => Telemetry { provider },
        Err(_) => {
            if let Some(p) = provider {
                let _ = p.shutdown_with_timeout(Duration::ZERO);
            }
            Telemetry { provider: None }
        }
    }
}

/// A span of a job's trace (`DEBUG`, target [`TRACE_TARGET`]). With `parent: &span`, a child of
/// that span, or a disabled span when the parent is disabled, so the children of an untraced
/// step are not recorded as traces of their own.
#[macro_export]
macro_rules! trace_span {
    (parent: $parent:expr, $name:literal $(, $($fields:tt)*)?) => {{
        let parent: &::tracing::Span = $parent;
        if parent.is_disabled() {
            ::tracing::Span::none()
        } else {
            ::tracing::debug_span!(
                target: $crate::telemetry::TRACE_TARGET, parent: parent, $name $(, $($fields)*)?
            )
        }
    }};
    ($name:literal $(, $($fields:tt)*)?) => {
        ::tracing::debug_span!(target: $crate::telemetry::TRACE_TARGET, $name $(, $($fields)*)?)
    };
}
