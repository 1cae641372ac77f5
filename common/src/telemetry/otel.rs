//! The OTLP exporter, configured from the standard `OTEL_*` variables.

use opentelemetry_otlp::SpanExporter;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Metadata;

use super::TRACE_TARGET;

fn set(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| !v.trim().is_empty())
}

/// Whether the environment asks for traces: an OTLP endpoint is set, the SDK is not disabled
/// and the traces exporter is not `none`.
pub(super) fn wanted() -> bool {
    let endpoint = set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    let exporter_none =
        std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.eq_ignore_ascii_case("none"));
    endpoint && !disabled && !exporter_none
}

/// A tracer provider with a batching OTLP/gRPC exporter, or `None` when traces are not wanted.
pub(super) fn provider_from_env(service: &str) -> Result<Option<SdkTracerProvider>, String> {
    if !wanted() {
        return Ok(None);
    }
    let exporter = SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| format!("OTLP exporter: {e}"))?;
    let mut resource = Resource::builder();
    if !set("OTEL_SERVICE_NAME") {
        resource = resource.with_service_name(service.to_string());
    }
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build(),
    ))
}

/// What goes to the exporter: the job-trace spans, and warnings and errors inside them (they
/// become span events).
pub(super) fn exported(meta: &Metadata<'_>) -> bool {
    if meta.is_span() {
        meta.target() == TRACE_TARGET
    } else {
        *meta.level() <= tracing::Level::WARN && meta.target().starts_with("ctcluster")
    }
}
