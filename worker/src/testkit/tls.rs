//! A throw-away PKI for TLS tests, made with the `openssl` command (Debian's, always present with
//! redis-server): a CA, a server certificate for `localhost`/`127.0.0.1`, a client certificate,
//! a second unrelated CA ("wrong CA") and an expired server certificate.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Files of the test PKI, all PEM, in a temp dir removed on drop.
#[derive(Debug)]
pub struct TestPki {
    dir: tempfile::TempDir,
}

impl TestPki {
    pub fn generate() -> io::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("streamjob-pki-")
            .tempdir()?;
        let pki = Self { dir };
        pki.self_signed_ca("ca", "streamjob test CA")?;
        pki.self_signed_ca("other-ca", "some other CA")?;
        std::fs::write(
            pki.path("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )?;
        std::fs::write(pki.path("client.ext"), "extendedKeyUsage=clientAuth\n")?;
        pki.signed("server", "localhost", "server.ext", "3")?;
        pki.signed("client", "streamjob", "client.ext", "3")?;
        // notAfter before now: `-days -1` (OpenSSL 3) makes a certificate that expired yesterday.
        pki.signed("expired", "localhost", "server.ext", "-1")?;
        Ok(pki)
    }

    /// `NAME.crt` / `NAME.key` (`ca`, `other-ca`, `server`, `client`, `expired`).
    pub fn cert(&self, name: &str) -> PathBuf {
        self.path(&format!("{name}.crt"))
    }

    pub fn key(&self, name: &str) -> PathBuf {
        self.path(&format!("{name}.key"))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn self_signed_ca(&self, name: &str, subject: &str) -> io::Result<()> {
        openssl(
            self.dir(),
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "3",
                "-subj",
                &format!("/CN={subject}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.crt"),
            ],
        )
    }

    fn signed(&self, name: &str, cn: &str, ext: &str, days: &str) -> io::Result<()> {
        openssl(
            self.dir(),
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={cn}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        )?;
        openssl(
            self.dir(),
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                days,
                "-extfile",
                ext,
                "-out",
                &format!("{name}.crt"),
            ],
        )
    }
}

fn openssl(dir: &Path, args: &[&str]) -> io::Result<()> {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run openssl: {e}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )))
    }
}

/// A TLS-terminating `stunnel4` (OpenSSL) in front of a plaintext TCP server: the Kafka-protocol
/// TLS listener for tests, since neither tansu 0.6 nor librdkafka's mock cluster serves TLS.
/// With `client_ca`, clients must present a certificate signed by it (mutual TLS).
#[derive(Debug)]
pub struct Stunnel {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Stunnel {
    /// Listens on `port` (127.0.0.1) with `cert`/`key`, forwards to `127.0.0.1:target`.
    pub fn start(
        port: u16,
        target: u16,
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> io::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("streamjob-stunnel-")
            .tempdir()?;
        let mut conf = format!(
            "foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{target}\ncert = {}\nkey = {}\n",
            cert.display(),
            key.display()
        );
        if let Some(ca) = client_ca {
            conf.push_str(&format!("CAfile = {}\nverifyChain = yes\n", ca.display()));
        }
        let conf_path = dir.path().join("stunnel.conf");
        std::fs::write(&conf_path, conf)?;
        let child = Command::new(stunnel_binary())
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot run stunnel4 (scripts/setup.sh --test installs it): {e}"),
                )
            })?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if std::time::Instant::now() > deadline {
                return Err(io::Error::other("stunnel did not start listening"));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(Self {
            child,
            port,
            _dir: dir,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

fn stunnel_binary() -> &'static str {
    if Path::new("/usr/bin/stunnel4").exists() {
        "/usr/bin/stunnel4"
    } else {
        "stunnel"
    }
}

impl Drop for Stunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
