//! The connection an apply runs on: TCP, TLS (rustls, with the CA, client certificate and server
//! name of `sink.redis.tls`) or a Unix socket, logged in with the sink's ACL user and database,
//! speaking RESP2 by hand (`resp.rs`). Where it goes and how it logs in come from the same
//! [`Target`](super::connection::Target) as the redis crate's connections (`connection.rs`).

use std::path::PathBuf;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::resp::{self, Commands, Reply};
use super::SinkError;

/// Where and how to connect, taken from a [`Target`](super::connection::Target).
#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    pub(crate) address: Address,
    /// TLS: the name the certificate must carry, and the client settings.
    pub(crate) tls: Option<(String, Arc<rustls::ClientConfig>)>,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) db: i64,
}

#[derive(Clone, Debug)]
pub(crate) enum Address {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Tcp { host, port } => write!(f, "{host}:{port}"),
            Address::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Read buffer growth: a batch's `EXEC` reply is tens of kilobytes.
const READ_CHUNK: usize = 64 * 1024;

/// One connection, used by one apply at a time.
pub(crate) struct RespConnection {
    stream: Box<dyn Stream>,
    /// Received bytes; `read[start..]` are not parsed yet.
    read: Vec<u8>,
    start: usize,
    address: String,
    /// An I/O or protocol error happened: replies may be out of step with requests.
    broken: bool,
}

impl RespConnection {
    /// Connects and logs in (`AUTH`, `SELECT`).
    pub(crate) async fn connect(endpoint: &Endpoint) -> Result<Self, SinkError> {
        let address = endpoint.address.to_string();
        let unavailable = |e: std::io::Error| SinkError::Unavailable(format!("{address}: {e}"));
        let stream: Box<dyn Stream> = match (&endpoint.address, &endpoint.tls) {
            (Address::Unix(path), _) => Box::new(
                tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(unavailable)?,
            ),
            (Address::Tcp { host, port }, tls) => {
                let tcp = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(unavailable)?;
                tcp.set_nodelay(true).map_err(unavailable)?;
                match tls {
                    None => Box::new(tcp),
                    Some((name, config)) => Box::new(tls_handshake(tcp, name, config).await?),
                }
            }
        };
        let mut conn = Self::over(stream, address);
        conn.log_in(endpoint).await?;
        Ok(conn)
    }

    fn over(stream: Box<dyn Stream>, address: String) -> Self {
        Self {
            stream,
            read: Vec::with_capacity(READ_CHUNK),
            start: 0,
            address,
            broken: false,
        }
    }

    async fn log_in(&mut self, endpoint: &Endpoint) -> Result<(), SinkError> {
        let mut login = Commands::default();
        if let Some(password) = &endpoint.password {
            match &endpoint.username {
                Some(user) => login.command(3).arg(b"AUTH").arg(user.as_bytes()),
                None => login.command(2).arg(b"AUTH"),
            }
            .arg(password.as_bytes());
        }
        if endpoint.db != 0 {
            login.command(2).arg(b"SELECT").int(endpoint.db);
        }
        for reply in self.query(&login).await? {
            if let Reply::Error(err) = reply {
                return Err(SinkError::Config(format!(
                    "redis at {} refused the apply connection's login: {err}",
                    self.address
                )));
            }
        }
        Ok(())
    }

    /// Sends `commands` and reads one reply per command.
    pub(crate) async fn query(&mut self, commands: &Commands) -> Result<Vec<Reply>, SinkError> {
        self.send(commands).await?;
        let mut replies = Vec::with_capacity(commands.len());
        for _ in 0..commands.len() {
            replies.push(self.reply().await?);
        }
        Ok(replies)
    }

    pub(crate) async fn send(&mut self, commands: &Commands) -> Result<(), SinkError> {
        if commands.len() == 0 {
            return Ok(());
        }
        self.stream
            .write_all(commands.bytes())
            .await
            .map_err(|e| self.io_error(e))?;
        self.stream.flush().await.map_err(|e| self.io_error(e))
    }

    /// The next reply.
    pub(crate) async fn reply(&mut self) -> Result<Reply, SinkError> {
        loop {
            match resp::parse(&self.read[self.start..]) {
                Ok(Some((reply, used))) => {
                    self.start += used;
                    return Ok(reply);
                }
                Ok(None) => self.fill().await?,
                Err(err) => {
                    self.broken = true;
                    return Err(SinkError::Unavailable(format!("{}: {err}", self.address)));
                }
            }
        }
    }

    /// Reads `count` replies that should be statuses (`QUEUED`) without keeping them; returns
    /// the first error among them, if any (a command refused while queued).
    pub(crate) async fn statuses(&mut self, count: usize) -> Result<Option<String>, SinkError> {
        const QUEUED: &[u8] = b"+QUEUED\r\n";
        let mut first_error = None;
        let mut left = count;
        while left > 0 {
            // The common case, without parsing: a QUEUED.
            let unread = &self.read[self.start..];
            if unread.starts_with(QUEUED) {
                self.start += QUEUED.len();
                left -= 1;
                continue;
            }
            if QUEUED.starts_with(unread) {
                self.fill().await?;
                continue;
            }
            match self.reply().await? {
                Reply::Error(err) => {
                    first_error.get_or_insert(err);
                }
                Reply::Status => {}
                other => {
                    self.broken = true;
                    return Err(SinkError::Script(format!(
                        "expected QUEUED from redis, got {other:?}"
                    )));
                }
            }
            left -= 1;
        }
        Ok(first_error)
    }

    /// Reads more bytes; the parsed ones are dropped first.
    async fn fill(&mut self) -> Result<(), SinkError> {
        if self.start > 0 {
            self.read.drain(..self.start);
            self.start = 0;
        }
        self.read.reserve(READ_CHUNK);
        let read = self
            .stream
            .read_buf(&mut self.read)
            .await
            .map_err(|e| self.io_error(e))?;
        if read == 0 {
            self.broken = true;
            return Err(SinkError::Unavailable(format!(
                "{}: redis closed the connection",
                self.address
            )));
        }
        Ok(())
    }

    /// Whether an I/O or protocol error left this connection unusable.
    pub(crate) fn is_broken(&self) -> bool {
        self.broken
    }

    fn io_error(&mut self, err: std::io::Error) -> SinkError {
        self.broken = true;
        SinkError::Unavailable(format!("{}: {err}", self.address))
    }
}

async fn tls_handshake(
    tcp: tokio::net::TcpStream,
    name: &str,
    config: &Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, SinkError> {
    let server_name = rustls::pki_types::ServerName::try_from(name.to_string())
        .map_err(|e| SinkError::Config(format!("`sink.redis.tls`: server name {name:?}: {e}")))?;
    tokio_rustls::TlsConnector::from(config.clone())
        .connect(server_name, tcp)
        .await
        .map_err(|e| SinkError::Unavailable(format!("TLS handshake with {name}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection whose server side sends `chunks` one write at a time.
    async fn serving(chunks: &[&'static [u8]]) -> RespConnection {
        let (client, mut server) = tokio::io::duplex(64);
        let chunks = chunks.to_vec();
        tokio::spawn(async move {
            for chunk in chunks {
                if server.write_all(chunk).await.is_err() {
                    return;
                }
                tokio::task::yield_now().await;
            }
        });
        RespConnection::over(Box::new(client), "test".into())
    }

    #[tokio::test]
    async fn queued_replies_split_across_reads_are_skipped_and_a_refusal_is_kept() {
        let mut conn = serving(&[
            b"+OK\r\n+QUE",
            b"UED\r\n-OOM command not allowed\r\n+QU",
            b"EUED\r",
            b"\n*2\r\n:1\r\n",
            b":-2\r\n",
        ])
        .await;
        let refused = conn.statuses(4).await.expect("statuses");
        assert_eq!(refused.as_deref(), Some("OOM command not allowed"));
        assert_eq!(
            conn.reply().await.expect("exec reply"),
            Reply::Array(Some(vec![Reply::Int(1), Reply::Int(-2)]))
        );
        assert!(!conn.is_broken());
    }

    #[tokio::test]
    async fn a_connection_closed_mid_reply_is_unavailable_and_not_reused() {
        let mut conn = serving(&[b"+QUEUED\r\n*3\r\n:1\r\n"]).await;
        assert_eq!(conn.statuses(1).await.expect("one QUEUED"), None);
        let err = conn.reply().await.expect_err("closed");
        assert!(err.is_retryable(), "{err}");
        assert!(conn.is_broken());
    }

    #[tokio::test]
    async fn garbage_instead_of_queued_breaks_the_connection() {
        let mut conn = serving(&[b":5\r\n"]).await;
        assert!(conn.statuses(1).await.is_err());
        assert!(conn.is_broken());
    }
}
