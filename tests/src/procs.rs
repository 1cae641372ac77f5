//! Real processes for tests: the workspace's binaries started as children, killed on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ctcluster_common::addr_file::parse_addr_file;

/// A child process, killed when dropped so a failing test leaves nothing running.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// Starts a built binary of the workspace with `RUST_LOG=warn` and the given environment.
    pub fn start(bin: &str, args: &[&str], env: &[(&str, String)]) -> Proc {
        let mut cmd = Command::new(binary(bin));
        cmd.args(args).env("RUST_LOG", "warn").stdout(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Proc(cmd.spawn().unwrap_or_else(|e| panic!("start {bin}: {e}")))
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// SIGTERM, then waits (bounded) for a successful exit.
    pub fn terminate(&mut self, what: &str) {
        let pid = self.0.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "{what} exited with {status} after SIGTERM"
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what} did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Where a started server listens, as it wrote to its `--addr-file`.
#[derive(Clone, Copy, Debug)]
pub struct Listening {
    /// The main port (gRPC for the coordinator, HTTP for the S3 server).
    pub port: u16,
    /// The plain-text health listener's port, when one was asked for.
    pub health: Option<u16>,
}

/// A fresh path for a child's `--addr-file` (the child writes it; nothing is created here).
pub fn addr_file_path(what: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "ctcluster-{what}-{}-{}.addr",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Waits (bounded) for the address file a child writes once it listens, and reads it; fails at
/// once if the child exits first. The child chose its ports itself (port 0): no port is picked
/// here and hoped free.
pub fn wait_for_addr_file(child: &mut Proc, path: &Path, what: &str) -> Vec<(String, SocketAddr)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            let _ = std::fs::remove_file(path);
            return parse_addr_file(&text).unwrap_or_else(|e| panic!("{what}: {e}"));
        }
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!("{what} exited ({status}) before it listened");
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not listen within 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The main port a child reported in its address file (its first entry): for children started
/// with `--listen 127.0.0.1:0 --addr-file PATH` by a test's own spawner.
pub fn reported_port(child: &mut Proc, path: &Path, what: &str) -> u16 {
    let addrs = wait_for_addr_file(child, path, what);
    addrs
        .first()
        .map(|(_, a)| a.port())
        .unwrap_or_else(|| panic!("{what} wrote an empty address file"))
}

/// The port of listener `name` in an address file's entries.
fn port_of(addrs: &[(String, SocketAddr)], name: &str) -> Option<u16> {
    addrs.iter().find(|(n, _)| n == name).map(|(_, a)| a.port())
}

/// Starts a `ctcluster-worker` with `args`, its health listener on a port it picks, and waits
/// until that listens; returns the worker and the health port. Killed when dropped.
pub fn start_worker_with_health(args: &[&str]) -> (Proc, u16) {
    let file = addr_file_path("worker");
    let file_arg = file.display().to_string();
    let mut all = args.to_vec();
    all.extend_from_slice(&["--health-listen", "127.0.0.1:0", "--addr-file", &file_arg]);
    let mut p = Proc::start("ctcluster-worker", &all, &[]);
    let addrs = wait_for_addr_file(&mut p, &file, "worker");
    let health = port_of(&addrs, "health").expect("the worker's health address");
    (p, health)
}

/// Starts a plain-text `ctcluster-worker` named `name` for the coordinator at `url`, with the
/// extra flags and environment. Killed when dropped.
pub fn start_worker(url: &str, name: &str, extra: &[&str], env: &[(&str, String)]) -> Proc {
    let mut args = vec!["--coordinator", url, "--name", name, "--insecure"];
    args.extend_from_slice(extra);
    Proc::start("ctcluster-worker", &args, env)
}

/// Starts a plain-text `ctcluster-coordinator` on a loopback port it picks, with its state in
/// `state` and the extra flags (`--health-listen 127.0.0.1:0` gets a port of its own too), and
/// waits until it listens. Killed when dropped.
pub fn start_coordinator(state: &Path, extra: &[&str]) -> (Proc, Listening) {
    coordinator_on("127.0.0.1:0", state, extra, &[])
}

/// [`start_coordinator`] with environment variables (a keyring, an OTLP endpoint).
pub fn start_coordinator_env(
    state: &Path,
    extra: &[&str],
    env: &[(&str, String)],
) -> (Proc, Listening) {
    coordinator_on("127.0.0.1:0", state, extra, env)
}

/// [`start_coordinator`] on a given port: a coordinator restarted where its workers and
/// clients already point.
pub fn restart_coordinator(port: u16, state: &Path, extra: &[&str]) -> Proc {
    coordinator_on(&format!("127.0.0.1:{port}"), state, extra, &[]).0
}

fn coordinator_on(
    listen: &str,
    state: &Path,
    extra: &[&str],
    env: &[(&str, String)],
) -> (Proc, Listening) {
    let file = addr_file_path("coordinator");
    let file_arg = file.display().to_string();
    let mut args = vec![
        "--listen",
        listen,
        "--state-url",
        state.to_str().expect("utf-8 state path"),
        "--insecure",
        "--addr-file",
        &file_arg,
    ];
    args.extend_from_slice(extra);
    let mut p = Proc::start("ctcluster-coordinator", &args, env);
    let addrs = wait_for_addr_file(&mut p, &file, "coordinator");
    let listening = Listening {
        port: port_of(&addrs, "grpc").expect("the coordinator's gRPC address"),
        health: port_of(&addrs, "health"),
    };
    (p, listening)
}

/// Starts a plain-text aggregator (`ctcluster-coordinator --role aggregator`) on a loopback
/// port, the given one (a restart where the coordinator and workers already point) or one it
/// picks, and waits until it listens; returns it and its port. Killed when dropped.
pub fn start_aggregator(port: Option<u16>) -> (Proc, u16) {
    let file = addr_file_path("aggregator");
    let (file_arg, listen) = (
        file.display().to_string(),
        format!("127.0.0.1:{}", port.unwrap_or(0)),
    );
    let args = [
        "--role",
        "aggregator",
        "--listen",
        &listen,
        "--insecure",
        "--addr-file",
        &file_arg,
    ];
    let mut p = Proc::start("ctcluster-coordinator", &args, &[]);
    let port = reported_port(&mut p, &file, "aggregator");
    (p, port)
}

/// Starts `ctcluster-s3`, the S3-compatible test server, over the folder `root` (a sub-folder
/// per bucket) on a loopback port it picks, and waits until it listens. Killed when dropped.
pub fn start_s3(root: &Path, access_key: &str, secret_key: &str) -> (Proc, u16) {
    let file = addr_file_path("s3");
    let child = Command::new(binary("ctcluster-s3"))
        .args(["--host", "127.0.0.1", "--port", "0", "--addr-file"])
        .arg(&file)
        .args(["--access-key", access_key, "--secret-key", secret_key])
        .arg(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start ctcluster-s3: {e}"));
    let mut server = Proc(child);
    let addrs = wait_for_addr_file(&mut server, &file, "ctcluster-s3");
    let port = port_of(&addrs, "s3").expect("the S3 server's address");
    (server, port)
}

/// The folder holding the workspace's built binaries (`ctctl`, `ctcluster-coordinator`, ...).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe dir");
    // Test binaries live in target/<profile>/deps, other binaries in target/<profile>.
    if dir.ends_with("deps") {
        dir.parent().expect("target dir").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// A built binary of the workspace; panics with the command to build it if missing.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first (.ci/run does)",
        path.display()
    );
    path
}

/// The Python interpreter of the test venv (`$CTCLUSTER_PYENV`, else
/// `~/.cache/ctcluster/pyenv`), which `./scripts/test` installs with the reference clients
/// (grpcio-health-checking, safetensors, pyarrow); panics with how to get it if it is missing.
pub fn python() -> PathBuf {
    let venv = std::env::var_os("CTCLUSTER_PYENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/ctcluster/pyenv")
        });
    let python = venv.join("bin/python");
    assert!(
        python.is_file(),
        "{} is missing: ./scripts/test installs the Python test venv (or set CTCLUSTER_PYENV)",
        python.display()
    );
    python
}

/// A script of tests/python.
pub fn python_script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(name)
}
