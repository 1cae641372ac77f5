//! The standard gRPC health protocol, asked by grpcio's own health client (Python's
//! grpcio-health-checking): the coordinator is SERVING on its port and on its plain health
//! listener; a worker is ready only while registered with a live coordinator, and alive
//! throughout; it is ready again once the coordinator is back.

use std::process::Command;

use ctcluster_tests::{
    python, python_script, restart_coordinator, start_coordinator, start_worker_with_health,
};

/// Asks `address` for `service`'s health until it is `expected` (or `wait_s` pass).
fn expect(address: &str, service: &str, expected: &str, wait_s: u32) {
    let out = Command::new(python())
        .arg(python_script("health_check.py"))
        .args([address, service, expected, &wait_s.to_string()])
        .output()
        .expect("run python");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    print!("{said}");
}

#[test]
fn grpc_health_clients_see_the_coordinator_and_registered_workers_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let extra = ["--health-listen", "127.0.0.1:0"];
    let (mut coord, listening) = start_coordinator(&state, &extra);
    let port = listening.port;
    let coord_health_addr = format!("127.0.0.1:{}", listening.health.expect("a health port"));
    let main = format!("127.0.0.1:{port}");
    for service in ["", "readiness", "liveness"] {
        expect(&coord_health_addr, service, "SERVING", 10);
    }
    expect(&main, "", "SERVING", 10);
    expect(&coord_health_addr, "no.such.Service", "SERVICE_UNKNOWN", 10);

    let (_worker, worker_health) =
        start_worker_with_health(&["--coordinator", &format!("http://{main}"), "--insecure"]);
    let worker_health_addr = format!("127.0.0.1:{worker_health}");
    expect(&worker_health_addr, "", "SERVING", 20);
    expect(&worker_health_addr, "readiness", "SERVING", 1);

    // The coordinator is gone: the worker is alive but not ready.
    coord.kill();
    expect(&worker_health_addr, "readiness", "NOT_SERVING", 10);
    expect(&worker_health_addr, "", "NOT_SERVING", 1);
    expect(&worker_health_addr, "liveness", "SERVING", 1);

    // Back: the worker registers again and is ready.
    let _coord = restart_coordinator(port, &state, &extra);
    expect(&worker_health_addr, "readiness", "SERVING", 30);
}
