//! A real `redis-server` per test: free port on 127.0.0.1, its own temp dir, killed on drop.
//!
//! Synchronous and std-only, so it works from sync tests, async tests and benchmarks alike.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to run the server.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// Keep data across [`RedisServer::restart`] (`appendonly yes`, fsync always). Default: no
    /// persistence at all (`--save '' --appendonly no`).
    pub persistence: bool,
    /// `requirepass`.
    pub password: Option<String>,
    /// Extra `--name value` arguments, e.g. `["--maxmemory", "1mb"]`.
    pub extra_args: Vec<String>,
    /// Run as a Sentinel monitoring this primary (`redis-server FILE --sentinel`).
    pub sentinel: Option<SentinelOf>,
    /// TLS only: no plaintext TCP port (`--port 0`), TLS on the server's port; the test itself
    /// reaches the server through a unix socket ([`RedisServer::url`]).
    pub tls: Option<RedisTlsOptions>,
}

/// `--tls-cert-file`, `--tls-key-file`, `--tls-ca-cert-file`, `--tls-auth-clients`.
#[derive(Debug, Clone)]
pub struct RedisTlsOptions {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: PathBuf,
    /// Require a client certificate signed by `ca_file` (mutual TLS).
    pub auth_clients: bool,
}

/// What a sentinel monitors.
#[derive(Debug, Clone)]
pub struct SentinelOf {
    pub master_name: String,
    pub primary_port: u16,
    pub quorum: u32,
}

/// A running `redis-server` child process.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    options: RedisOptions,
}

const START_TIMEOUT: Duration = Duration::from_secs(10);

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl RedisServer {
    /// Starts a throw-away server without persistence.
    pub fn start() -> io::Result<Self> {
        Self::start_with(RedisOptions::default())
    }

    pub fn start_with(options: RedisOptions) -> io::Result<Self> {
        let mut last_err = None;
        // Another process may grab the port between our probe and redis' bind: try a few.
        for _ in 0..5 {
            let port = free_port()?;
            let mut server = Self {
                child: None,
                port,
                dir: tempfile::Builder::new()
                    .prefix("streamjob-redis-")
                    .tempdir()?,
                options: options.clone(),
            };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("redis-server did not start")))
    }

    fn spawn(&mut self) -> io::Result<()> {
        let mut cmd = Command::new("redis-server");
        if let Some(sentinel) = &self.options.sentinel {
            // A sentinel rewrites its config file: each gets its own, written once.
            let conf = self.dir.path().join("sentinel.conf");
            if !conf.exists() {
                std::fs::write(
                    &conf,
                    format!(
                        "sentinel monitor {name} 127.0.0.1 {port} {quorum}\n\
                         sentinel down-after-milliseconds {name} 1000\n\
                         sentinel failover-timeout {name} 5000\n",
                        name = sentinel.master_name,
                        port = sentinel.primary_port,
                        quorum = sentinel.quorum,
                    ),
                )?;
            }
            cmd.arg(&conf).arg("--sentinel");
        }
        match &self.options.tls {
            None => cmd.arg("--port").arg(self.port.to_string()),
            Some(tls) => cmd
                .args(["--port", "0", "--tls-port"])
                .arg(self.port.to_string())
                .arg("--tls-cert-file")
                .arg(&tls.cert_file)
                .arg("--tls-key-file")
                .arg(&tls.key_file)
                .arg("--tls-ca-cert-file")
                .arg(&tls.ca_file)
                .args([
                    "--tls-auth-clients",
                    if tls.auth_clients { "yes" } else { "no" },
                ])
                // Replicas and sentinels reach this server over TLS too (they use the same
                // certificate as their client certificate).
                .args(["--tls-replication", "yes"])
                .arg("--unixsocket")
                .arg(self.socket_path())
                .args(["--unixsocketperm", "700"]),
        };
        cmd.arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log_path())
            .arg("--daemonize")
            .arg("no")
            .arg("--protected-mode")
            .arg("no");
        if self.options.sentinel.is_some() {
            // No data options for a sentinel.
        } else if self.options.persistence {
            cmd.args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ]);
        } else {
            cmd.args(["--save", "", "--appendonly", "no"]);
        }
        if let Some(password) = &self.options.password {
            cmd.arg("--requirepass").arg(password);
        }
        cmd.args(&self.options.extra_args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot run redis-server (is it installed?): {e}"),
            )
        })?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                return Err(io::Error::other(format!(
                    "redis-server exited with {status} on port {}: {}",
                    self.port,
                    self.log_tail()
                )));
            }
            if self.ping().is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::other(format!(
                    "redis-server on port {} not ready after {START_TIMEOUT:?}: {}",
                    self.port,
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `PING` (after `AUTH` when a password is set); ready means `+PONG`.
    fn ping(&self) -> io::Result<()> {
        let mut stream = self.plain_stream(Duration::from_secs(1))?;
        let mut request = Vec::new();
        if let Some(password) = &self.options.password {
            request.extend_from_slice(
                format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{password}\r\n", password.len()).as_bytes(),
            );
        }
        request.extend_from_slice(b"*1\r\n$4\r\nPING\r\n");
        stream.write_all(&request)?;
        let mut reply = Vec::new();
        let mut buf = [0u8; 256];
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                break;
            }
            reply.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&reply);
            if text.contains("+PONG") {
                return Ok(());
            }
            if text.contains("-LOADING") || text.contains("-ERR") || text.contains("-NOAUTH") {
                break;
            }
        }
        Err(io::Error::other(format!(
            "not ready: {}",
            String::from_utf8_lossy(&reply).trim()
        )))
    }

    /// The test's own plaintext way in: TCP, or the unix socket of a TLS-only server.
    fn plain_stream(&self, read_timeout: Duration) -> io::Result<PlainStream> {
        if self.options.tls.is_some() {
            let socket = std::os::unix::net::UnixStream::connect(self.socket_path())?;
            socket.set_read_timeout(Some(read_timeout))?;
            Ok(PlainStream::Unix(socket))
        } else {
            let tcp = TcpStream::connect(("127.0.0.1", self.port))?;
            tcp.set_read_timeout(Some(read_timeout))?;
            Ok(PlainStream::Tcp(tcp))
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:{port}/0` (no password in it: pass it separately); for a TLS-only
    /// server the unix socket, `unix://{dir}/redis.sock`, the test's own way in.
    pub fn url(&self) -> String {
        match self.options.tls {
            None => format!("redis://127.0.0.1:{}/0", self.port),
            Some(_) => format!("unix://{}", self.socket_path().display()),
        }
    }

    /// `rediss://localhost:{port}/0`: the TLS port, by the name the test certificate carries.
    pub fn tls_url(&self) -> String {
        format!("rediss://localhost:{}/0", self.port)
    }

    fn socket_path(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// The server's working directory (AOF files, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills the server (SIGKILL, like a crashed pod). With persistence, every acknowledged write
    /// is on disk already (`appendfsync always`).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -STOP` (`pause: true`) or `kill -CONT` the server: a paused replica misses writes.
    pub fn pause(&self, pause: bool) -> io::Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| io::Error::other("redis-server is not running"))?;
        let signal = if pause { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: kill(2) on our own child's pid; no memory is shared.
        if unsafe { libc::kill(pid as libc::pid_t, signal) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sends one command and returns the raw reply text (tests and tools).
    pub fn command(&self, args: &[&str]) -> io::Result<String> {
        let mut stream = self.plain_stream(Duration::from_secs(30))?;
        let mut request = Vec::new();
        if let Some(password) = &self.options.password {
            request.extend_from_slice(
                format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{password}\r\n", password.len()).as_bytes(),
            );
        }
        request.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for arg in args {
            request.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
        }
        stream.write_all(&request)?;
        // The first bytes may take a while (SAVE); the rest of a long reply follows at once.
        let mut reply = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    reply.extend_from_slice(&buf[..n]);
                    stream.set_read_timeout(Duration::from_millis(100))?;
                }
                Err(e)
                    if !reply.is_empty()
                        && matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                {
                    break
                }
                Err(e) => return Err(e),
            }
        }
        Ok(String::from_utf8_lossy(&reply).into_owned())
    }

    /// `SAVE`s a snapshot and copies it to `to`: what Redis holds now.
    pub fn snapshot(&self, to: &Path) -> io::Result<()> {
        let reply = self.command(&["SAVE"])?;
        if !reply.contains("+OK") {
            return Err(io::Error::other(format!("SAVE failed: {reply}")));
        }
        std::fs::copy(self.dir.path().join("dump.rdb"), to)?;
        Ok(())
    }

    /// SIGKILLs the server, puts `snapshot` back as its data and starts it again (no AOF):
    /// Redis then holds an older but consistent state, having lost every write since the
    /// snapshot, as after a failover to a lagging replica.
    pub fn restore(&mut self, snapshot: &Path) -> io::Result<()> {
        self.stop();
        for aof in ["appendonlydir", "appendonly.aof"] {
            let path = self.dir.path().join(aof);
            if path.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else if path.exists() {
                std::fs::remove_file(&path)?;
            }
        }
        std::fs::copy(snapshot, self.dir.path().join("dump.rdb"))?;
        let persistence = std::mem::replace(&mut self.options.persistence, false);
        let result = self.restart();
        self.options.persistence = persistence;
        result
    }

    /// Stops (if running) and starts again on the same port and directory.
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                // The old socket may linger for a moment.
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// TCP or unix socket, whichever [`RedisServer::plain_stream`] opened.
enum PlainStream {
    Tcp(TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl PlainStream {
    fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.set_read_timeout(Some(timeout)),
            Self::Unix(s) => s.set_read_timeout(Some(timeout)),
        }
    }
}

impl Read for PlainStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.read(buf),
            Self::Unix(s) => s.read(buf),
        }
    }
}

impl Write for PlainStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.write(buf),
            Self::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.flush(),
            Self::Unix(s) => s.flush(),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
