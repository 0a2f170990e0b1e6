//! `sink.redis.tls.serverName`: the name the server's TLS certificate must carry (and the SNI the
//! sink sends) when it differs from the address the sink connects to, e.g. a certificate issued
//! for `redis.internal` on a server reached by IP, or the primary a set of sentinels announces by
//! IP.
//!
//! The redis crate verifies the certificate against the host of the connection address and takes
//! no rustls configuration of ours, but it lets a connection resolve host names with a resolver
//! of ours. So the connection address carries the server name (which rustls then sends as SNI and
//! verifies the certificate against, with the CA of `sink.redis.tls.caFile`), and
//! [`ServerNameRedirect`] resolves that one name to the real host. Every other name resolves as
//! usual. The redis crate's `ConnectionManager` and its Sentinel lookup cannot take a resolver:
//! with a server name the sink keeps a plain multiplexed connection that it reconnects itself
//! (`primary.rs`), and asks the sentinels for the primary itself (`sentinel_primary.rs`).

use std::net::SocketAddr;

use redis::io::AsyncDNSResolver;
use redis::{ConnectionAddr, ConnectionInfo, RedisFuture};

use super::SinkError;

/// Resolves `server_name` to `host` (the URL's host, or the primary's address); any other name
/// as the system does.
#[derive(Clone, Debug)]
pub(crate) struct ServerNameRedirect {
    server_name: String,
    host: String,
}

impl ServerNameRedirect {
    /// The host really connected to.
    pub(crate) fn host(&self) -> &String {
        &self.host
    }

    /// The address really connected to, for logs and for noticing a new primary.
    pub(crate) fn address(&self, port: u16) -> String {
        format!("{}:{port}", self.host)
    }
}

impl AsyncDNSResolver for ServerNameRedirect {
    fn resolve<'a, 'b: 'a>(
        &'a self,
        host: &'b str,
        port: u16,
    ) -> RedisFuture<'a, Box<dyn Iterator<Item = SocketAddr> + Send + 'a>> {
        let target = if host.eq_ignore_ascii_case(&self.server_name) {
            self.host.as_str()
        } else {
            host
        };
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((target, port)).await?.collect();
            Ok(Box::new(addrs.into_iter()) as Box<dyn Iterator<Item = SocketAddr> + Send>)
        })
    }
}

/// `info` (a `rediss://` address) with `server_name` as its host, and the redirect of that name
/// to the original host.
pub(crate) fn redirect(
    info: ConnectionInfo,
    server_name: &str,
) -> Result<(ConnectionInfo, ServerNameRedirect), SinkError> {
    let ConnectionAddr::TcpTls { host, port, .. } = info.addr().clone() else {
        return Err(SinkError::Config(
            "`sink.redis.tls.serverName`: needs a rediss:// URL".into(),
        ));
    };
    let redirect = ServerNameRedirect {
        server_name: server_name.to_string(),
        host,
    };
    let addr = ConnectionAddr::TcpTls {
        host: server_name.to_string(),
        port,
        insecure: false,
        tls_params: None,
    };
    Ok((info.set_addr(addr), redirect))
}
