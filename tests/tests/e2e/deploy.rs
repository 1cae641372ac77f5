//! The deployment files that are not run here: the OpenTelemetry Collector config and its
//! compose file must at least be consistent.

use std::path::PathBuf;

fn read(rel: &str) -> serde_norway::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{rel}: {e}"));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn otel_collector_pipeline_is_complete() {
    let c = read("deploy/otel/collector.yaml");
    let traces = &c["service"]["pipelines"]["traces"];
    for section in ["receivers", "processors", "exporters"] {
        let used = traces[section]
            .as_sequence()
            .unwrap_or_else(|| panic!("{section}"));
        assert!(!used.is_empty(), "the traces pipeline has no {section}");
        for name in used {
            let name = name.as_str().unwrap();
            assert!(
                c[section].get(name).is_some(),
                "pipeline uses {section}.{name}, which is not defined"
            );
        }
    }
    assert_eq!(
        c["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].as_str(),
        Some("0.0.0.0:4317"),
        "ctcluster exports OTLP over gRPC"
    );
    let compose = read("deploy/otel/compose.yaml");
    let collector = &compose["services"]["otel-collector"];
    let mounts: Vec<&str> = collector["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(mounts.iter().any(|m| m.starts_with("./collector.yaml:")));
    let jaeger_endpoint = c["exporters"]["otlp/jaeger"]["endpoint"].as_str().unwrap();
    let host = jaeger_endpoint.split(':').next().unwrap();
    assert!(
        compose["services"].get(host).is_some(),
        "the collector exports to {host}, which compose does not start"
    );
}
