//! W3C trace context across processes: `ctctl` to the coordinator in the `Submit` call's
//! metadata, the coordinator to a worker in the `FetchWork` reply's metadata.

use std::collections::{BTreeMap, HashMap};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// A span's context as W3C headers (`traceparent`, `tracestate`); empty when not traced.
pub type TraceCarrier = BTreeMap<String, String>;

/// The headers of the trace context that may travel.
const KEYS: [&str; 2] = ["traceparent", "tracestate"];

/// The context of `span`, ready to send; empty when the span is not exported.
pub fn carrier_of(span: &Span) -> TraceCarrier {
    if span.is_disabled() {
        return TraceCarrier::new();
    }
    let mut headers = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut headers);
    headers.into_iter().collect()
}

/// Makes `span` a child of the remote span described by `carrier` (nothing if it is empty).
pub fn child_of_carrier(span: &Span, carrier: &TraceCarrier) {
    if span.is_disabled() || carrier.is_empty() {
        return;
    }
    let headers: HashMap<String, String> = carrier.clone().into_iter().collect();
    let cx = TraceContextPropagator::new().extract(&headers);
    let _ = span.set_parent(cx);
}

/// Writes a carrier into gRPC metadata.
pub fn carrier_to_metadata(carrier: &TraceCarrier, metadata: &mut MetadataMap) {
    for key in KEYS {
        if let Some(v) = carrier.get(key)
            && let Ok(v) = MetadataValue::try_from(v.as_str())
        {
            metadata.insert(MetadataKey::from_static(key), v);
        }
    }
}

/// Reads a carrier from gRPC metadata; only the trace context headers are taken.
pub fn carrier_from_metadata(metadata: &MetadataMap) -> TraceCarrier {
    KEYS.iter()
        .filter_map(|k| {
            let v = metadata.get(*k)?.to_str().ok()?;
            (v.len() <= 512).then(|| (k.to_string(), v.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trip_keeps_only_trace_headers() {
        let mut c = TraceCarrier::new();
        c.insert(
            "traceparent".into(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        );
        c.insert("authorization".into(), "secret".into());
        let mut md = MetadataMap::new();
        carrier_to_metadata(&c, &mut md);
        assert!(md.get("authorization").is_none());
        let back = carrier_from_metadata(&md);
        assert_eq!(back.len(), 1);
        assert_eq!(back["traceparent"], c["traceparent"]);
    }

    #[test]
    fn a_disabled_span_has_an_empty_carrier() {
        assert!(carrier_of(&Span::none()).is_empty());
    }
}
