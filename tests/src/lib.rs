//! Shared harness for the end-to-end tests: real redis-server, real Kafka-protocol broker, real
//! worker processes.
//!
//! # How the tests find the `streamjob-worker` binary
//!
//! `env!("CARGO_BIN_EXE_…")` only exists for a package's own binaries, so this crate locates the
//! worker's binary next to its own test executable: a test binary lives in
//! `<target>/<profile>/deps/`, the worker in `<target>/<profile>/streamjob-worker`. Before the
//! first use, [`worker_binary`] runs `cargo build -p streamjob-worker --bin streamjob-worker` with
//! the same target directory and profile (a guarantee that the binary is never stale under
//! `-p streamjob-tests`). It is not free after `cargo nextest run --workspace`: that build unifies
//! the test dependencies' features, a `-p` build does not, so Cargo compiles a second variant.
//! `STREAMJOB_WORKER_BIN=/path/to/streamjob-worker` skips all of that; `scripts/test.sh` sets it
//! (and `STREAMJOB_OPERATOR_BIN`) to the binaries its own workspace build made.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub mod controlplane;

pub use streamjob_worker::testkit;

/// `n` seeded AnchorInfo payloads of the small shape the control-plane tests produce: 2,000
/// users, 1,000 messages, 500 malformed per million (so the DLQ path runs too).
pub fn small_traffic(seed: u64, n: usize) -> Vec<Vec<u8>> {
    use streamjob_worker::demo::{EventGenerator, TrafficShape};
    let mut generator = EventGenerator::new(
        seed,
        TrafficShape {
            users: 2_000,
            messages: 1_000,
            malformed_ppm: 500,
            ..TrafficShape::default()
        },
    );
    (0..n).map(|_| generator.next_payload()).collect()
}

/// Path of the worker binary, built on first use (see the module docs).
pub fn worker_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| workspace_binary("streamjob-worker", "STREAMJOB_WORKER_BIN"))
}

/// Path of the operator binary, built on first use like the worker's
/// (`STREAMJOB_OPERATOR_BIN=/path/to/streamjob-operator` skips the build).
pub fn operator_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| workspace_binary("streamjob-operator", "STREAMJOB_OPERATOR_BIN"))
}

/// The binary `name` (of the package of the same name) next to this test executable, built with
/// the same target directory and profile; `override_env` names a variable that points at one.
fn workspace_binary(name: &str, override_env: &str) -> PathBuf {
    if let Ok(path) = std::env::var(override_env) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("deps dir");
    let profile_dir = if deps.ends_with("deps") {
        deps.parent().expect("profile dir")
    } else {
        deps
    };
    let target_dir = profile_dir.parent().expect("target dir");
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_string();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--quiet", "-p", name, "--bin", name])
        .env("CARGO_TARGET_DIR", target_dir);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            build.arg("--release");
        }
        other => {
            build.args(["--profile", other]);
        }
    }
    let status = build.status().expect("cargo runs");
    assert!(status.success(), "building {name} failed: {status}");
    let binary = profile_dir.join(name);
    assert!(
        binary.exists(),
        "{} missing after the build",
        binary.display()
    );
    binary
}

/// A free TCP port on 127.0.0.1 (racy by nature; good enough for one test at a time).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A `streamjob-worker` child process; SIGKILLed on drop.
#[derive(Debug)]
pub struct Worker {
    child: Option<Child>,
    log: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Worker {
    /// Starts `streamjob-worker ARGS…`, logging stdout and stderr to `log` (appended).
    pub fn start(args: &[&str], log: &Path) -> Self {
        Self::start_with_env(args, &[], log)
    }

    /// Like [`Worker::start`], with extra environment variables (e.g. a pod's `POD_NAME`).
    pub fn start_with_env(args: &[&str], env: &[(String, String)], log: &Path) -> Self {
        let mut worker = Self {
            child: None,
            log: log.to_path_buf(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: env.to_vec(),
        };
        worker.spawn();
        worker
    }

    fn spawn(&mut self) {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(worker_binary())
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("streamjob-worker starts");
        self.child = Some(child);
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: no flush, no goodbye (a crashed pod).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the same command again.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// SIGTERM, then waits (at most `timeout`) for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the process to exit on its own.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The last `lines` lines of the log (for failure messages).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `GET http://{addr}{path}` body, or `None` when nothing answers.
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// Writes a job.yaml into `dir`.
pub fn write_config(dir: &Path, yaml: &str) -> PathBuf {
    let path = dir.join("job.yaml");
    std::fs::write(&path, yaml).expect("job.yaml written");
    path
}
