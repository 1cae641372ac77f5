//! Real processes for tests: the workspace's binaries started as children, killed on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// Starts a plain-text `ctcluster-coordinator` on loopback `port` with its state in `state`
/// and the extra flags, and waits until it listens. Killed when dropped.
pub fn start_coordinator(port: u16, state: &Path, extra: &[&str]) -> Proc {
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec![
        "--listen",
        &listen,
        "--state-url",
        state.to_str().expect("utf-8 state path"),
        "--insecure",
    ];
    args.extend_from_slice(extra);
    let p = Proc::start("ctcluster-coordinator", &args, &[]);
    wait_for_port(port, "coordinator");
    p
}

/// Starts `ctcluster-s3`, the S3-compatible test server, over the folder `root` (a sub-folder
/// per bucket) on a free loopback port, and waits until it listens. Killed when dropped.
pub fn start_s3(root: &Path, access_key: &str, secret_key: &str) -> (Proc, u16) {
    let port = free_port();
    let child = Command::new(binary("ctcluster-s3"))
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", access_key, "--secret-key", secret_key])
        .arg(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start ctcluster-s3: {e}"));
    let server = Proc(child);
    wait_for_port(port, "ctcluster-s3");
    (server, port)
}

/// A port free right now on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls (bounded) until something listens on the port.
pub fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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
