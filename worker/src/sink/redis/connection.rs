//! How the sink reaches Redis: the URL, the ACL user and password, and TLS (`rediss://` with the
//! CA, client certificate and key files from `sink.redis.tls`), for a fixed address and for the
//! sentinels and the primaries they name alike; plus the translation of a failed connection into
//! a message that names the field to fix. `primary.rs` decides *where* to connect; this module is
//! the one place that decides *how*.
//!
//! TLS is rustls (ring provider) through the redis crate's `tokio-rustls-comp` feature, so the
//! worker links no TLS library beyond what its image has.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, ClientTlsConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo,
    RedisError, RedisResult, TlsCertificates, TlsMode,
};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::resp_connection::{Address, Endpoint};
use super::server_name::{self, ServerNameRedirect};
use super::SinkError;
use crate::config::{RedisSentinelConfig, RedisSinkConfig, ENV_REDIS_PASSWORD};

fn config_error(field: &str, err: impl std::fmt::Display) -> SinkError {
    SinkError::Config(format!("`{field}`: {err}"))
}

/// One Redis server to connect to: its client and, with `sink.redis.tls.serverName`, the
/// resolver that sends the certificate's name to the server's real address (`server_name.rs`).
#[derive(Clone, Debug)]
pub(crate) struct Target {
    client: redis::Client,
    redirect: Option<ServerNameRedirect>,
    /// For the apply connections (`resp_connection.rs`), which do their own TLS: the same CA and
    /// client certificate. `None` without TLS.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Target {
    /// The primary a set of sentinels named, as the redis crate's Sentinel client returned it
    /// (no server-name redirect).
    pub(crate) fn named_by_sentinels(
        client: redis::Client,
        cfg: &RedisSinkConfig,
    ) -> Result<Self, SinkError> {
        let tls = tls_config(client.get_connection_info(), certificates(cfg)?.as_ref())?;
        Ok(Self {
            client,
            redirect: None,
            tls,
        })
    }

    /// Where and how an apply connection reaches this server.
    pub(crate) fn endpoint(&self) -> Result<Endpoint, SinkError> {
        let info = self.client.get_connection_info();
        let settings = info.redis_settings();
        let (address, tls) = match info.addr() {
            ConnectionAddr::Unix(path) => (Address::Unix(path.clone()), None),
            ConnectionAddr::Tcp(host, port) => (
                Address::Tcp {
                    host: host.clone(),
                    port: *port,
                },
                None,
            ),
            ConnectionAddr::TcpTls { host, port, .. } => {
                // With a server-name redirect, `host` is the certificate's name and the
                // redirect knows the real one.
                let connect_to = self.redirect.as_ref().map_or(host, |r| r.host());
                let address = Address::Tcp {
                    host: connect_to.clone(),
                    port: *port,
                };
                (
                    address,
                    self.tls.clone().map(|config| (host.clone(), config)),
                )
            }
            other => {
                return Err(config_error(
                    "sink.redis.url",
                    format!("unsupported address {other}"),
                ))
            }
        };
        Ok(Endpoint {
            address,
            tls,
            username: settings.username().map(str::to_string),
            password: settings.password().map(str::to_string),
            db: settings.db(),
        })
    }

    /// `host:port` really connected to.
    pub(crate) fn address(&self) -> String {
        match (&self.redirect, self.client.get_connection_info().addr()) {
            (Some(redirect), ConnectionAddr::TcpTls { port, .. }) => redirect.address(*port),
            (_, addr) => addr.to_string(),
        }
    }

    /// The client for a redis-rs `ConnectionManager`, which takes no resolver of ours: `None`
    /// behind a server-name redirect (the sink then keeps a plain connection, `primary.rs`).
    pub(crate) fn manager_client(&self) -> Option<&redis::Client> {
        match self.redirect {
            None => Some(&self.client),
            Some(_) => None,
        }
    }

    pub(crate) fn connection_config(&self, timeout: Duration) -> AsyncConnectionConfig {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        match &self.redirect {
            Some(redirect) => config.set_dns_resolver(redirect.clone()),
            None => config,
        }
    }

    /// A new multiplexed connection, its calls timing out after `timeout`.
    pub(crate) async fn connect(&self, timeout: Duration) -> RedisResult<MultiplexedConnection> {
        self.client
            .get_multiplexed_async_connection_with_config(&self.connection_config(timeout))
            .await
    }
}

/// The URL's connection info with the ACL user and the password from the environment.
pub(crate) fn connection_info(cfg: &RedisSinkConfig) -> Result<ConnectionInfo, SinkError> {
    let info = cfg
        .url
        .as_str()
        .into_connection_info()
        .map_err(|e| config_error("sink.redis.url", e))?;
    let mut settings = info.redis_settings().clone();
    if let Some(username) = cfg.username.as_deref() {
        settings = settings.set_username(username);
    }
    if let Some(password) = cfg.password.as_deref().filter(|p| !p.is_empty()) {
        settings = settings.set_password(password);
    }
    Ok(info.set_redis_settings(settings))
}

/// Whether `sink.redis.url` is `rediss://`: then every connection, to sentinels included, is TLS.
fn uses_tls(info: &ConnectionInfo) -> bool {
    matches!(info.addr(), ConnectionAddr::TcpTls { .. })
}

/// The files of `sink.redis.tls`, read now, so a missing or unreadable file is reported at start,
/// naming the field. `None` without a `tls` section: a `rediss://` URL then trusts the system's
/// CA roots.
fn certificates(cfg: &RedisSinkConfig) -> Result<Option<TlsCertificates>, SinkError> {
    let Some(tls) = &cfg.tls else {
        return Ok(None);
    };
    let root_cert = match &tls.ca_file {
        Some(path) => Some(read_pem("sink.redis.tls.caFile", path)?),
        None => None,
    };
    let client_tls = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            client_cert: read_pem("sink.redis.tls.certFile", cert)?,
            client_key: read_pem("sink.redis.tls.keyFile", key)?,
        }),
        _ => None,
    };
    Ok(Some(TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// `sink.redis.tls.serverName`, if set.
pub(crate) fn server_name(cfg: &RedisSinkConfig) -> Option<&str> {
    cfg.tls.as_ref().and_then(|tls| tls.server_name.as_deref())
}

/// The fixed address in `sink.redis.url`.
pub(crate) fn client(cfg: &RedisSinkConfig) -> Result<Target, SinkError> {
    let info = connection_info(cfg)?;
    if uses_tls(&info) {
        install_crypto_provider();
    }
    match server_name(cfg) {
        Some(name) => {
            let (info, redirect) = server_name::redirect(info, name)?;
            target_with_tls(info, Some(redirect), cfg)
        }
        None => target_with_tls(info, None, cfg),
    }
}

/// The target at `info` with the files of `sink.redis.tls` (if any).
pub(crate) fn target_with_tls(
    info: ConnectionInfo,
    redirect: Option<ServerNameRedirect>,
    cfg: &RedisSinkConfig,
) -> Result<Target, SinkError> {
    let certificates = certificates(cfg)?;
    let tls = tls_config(&info, certificates.as_ref())?;
    let client = match certificates {
        None => redis::Client::open(info).map_err(|e| config_error("sink.redis.url", e))?,
        Some(certificates) => redis::Client::build_with_tls(info, certificates)
            .map_err(|e| config_error("sink.redis.tls", e))?,
    };
    Ok(Target {
        client,
        redirect,
        tls,
    })
}

/// The rustls settings of the apply connections to `info`, from the files of `sink.redis.tls`
/// (read once, by [`certificates`]) the way the redis crate builds its own: the CA file's
/// certificates (else the system's roots) and the client certificate, if any. `None` unless
/// `info` is a TLS address.
fn tls_config(
    info: &ConnectionInfo,
    certificates: Option<&TlsCertificates>,
) -> Result<Option<Arc<rustls::ClientConfig>>, SinkError> {
    if !uses_tls(info) {
        return Ok(None);
    }
    install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    match certificates.as_ref().and_then(|c| c.root_cert.as_deref()) {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| config_error("sink.redis.tls.caFile", e))?;
                roots
                    .add(cert)
                    .map_err(|e| config_error("sink.redis.tls.caFile", e))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
        }
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match certificates.and_then(|c| c.client_tls.as_ref()) {
        None => builder.with_no_client_auth(),
        Some(client) => {
            let chain = CertificateDer::pem_slice_iter(&client.client_cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| config_error("sink.redis.tls.certFile", e))?;
            let key = PrivateKeyDer::from_pem_slice(&client.client_key)
                .map_err(|e| config_error("sink.redis.tls.keyFile", e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| config_error("sink.redis.tls.keyFile", e))?
        }
    };
    Ok(Some(Arc::new(config)))
}

/// The client that asks `sentinel.nodes` for the primary. With a `rediss://` URL, both the
/// sentinels and the primaries they name are reached over TLS with the same CA and client
/// certificate (Redis' own TLS setup: `tls-port` on every node, `tls-replication yes`), and the
/// primary's certificate must carry the address the sentinels announce for it.
pub(crate) fn sentinel_client(
    cfg: &RedisSinkConfig,
    sentinel: &RedisSentinelConfig,
) -> Result<SentinelClient, SinkError> {
    let info = connection_info(cfg)?;
    let tls = uses_tls(&info);
    let mut nodes = Vec::with_capacity(sentinel.nodes.len());
    for node in &sentinel.nodes {
        let (host, port) = node
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host.to_string(), port.parse::<u16>().ok()?)))
            .ok_or_else(|| config_error("sink.redis.sentinel.nodes", format!("{node:?}")))?;
        nodes.push(match tls {
            false => ConnectionAddr::Tcp(host, port),
            true => ConnectionAddr::TcpTls {
                host,
                port,
                insecure: false,
                tls_params: None,
            },
        });
    }
    let settings = info.redis_settings();
    let mut builder =
        SentinelClientBuilder::new(nodes, &sentinel.master_name, SentinelServerType::Master)
            .map_err(|e| config_error("sink.redis.sentinel", e))?
            .set_client_to_redis_db(settings.db());
    // The user may come from the URL (`rediss://user@sentinel/0`) or from `username`.
    if let Some(username) = settings.username() {
        builder = builder.set_client_to_redis_username(username);
    }
    if let Some(password) = settings.password() {
        builder = builder.set_client_to_redis_password(password);
    }
    if let Some(password) = sentinel.password.as_deref().filter(|p| !p.is_empty()) {
        builder = builder.set_client_to_sentinel_password(password);
    }
    if tls {
        install_crypto_provider();
        builder = builder.set_client_to_redis_tls_mode(TlsMode::Secure);
        if let Some(certificates) = certificates(cfg)? {
            builder = builder
                .set_client_to_sentinel_certificates(certificates.clone())
                .set_client_to_redis_certificates(certificates);
        }
    }
    builder
        .build()
        .map_err(|e| config_error("sink.redis.sentinel", e))
}

/// rustls needs one process-wide crypto provider; the redis crate uses the default one.
fn install_crypto_provider() {
    // An error only means a provider is installed already (by an earlier call or a library).
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn read_pem(field: &str, path: &Path) -> Result<Vec<u8>, SinkError> {
    let bytes = std::fs::read(path).map_err(|e| {
        SinkError::Config(format!(
            "`{field}`: cannot read {}: {e} (on Kubernetes this file is the Secret key the \
             StreamJob's spec.redis.tls names: does the Secret exist and hold that key?)",
            path.display()
        ))
    })?;
    if !String::from_utf8_lossy(&bytes).contains("-----BEGIN ") {
        return Err(SinkError::Config(format!(
            "`{field}`: {} is not PEM (no -----BEGIN line)",
            path.display()
        )));
    }
    Ok(bytes)
}

/// Makes a failed connect or first command say what is wrong and which field fixes it. TLS
/// verification failures and refused credentials become [`SinkError::Config`] (retrying the same
/// settings cannot help; on Kubernetes the pod restarts with the kubelet's backoff, picking up a
/// fixed Secret); everything else keeps its usual classification.
pub(crate) fn explain(err: RedisError, cfg: &RedisSinkConfig) -> SinkError {
    match refusal(&err, cfg) {
        Some(reason) => SinkError::Config(reason),
        None => SinkError::from(err),
    }
}

/// The user-facing reason when the server refused the TLS handshake or the credentials; `None`
/// for every other failure.
pub(crate) fn refusal(err: &RedisError, cfg: &RedisSinkConfig) -> Option<String> {
    let chain = error_chain(err);
    if let Some(reason) = tls_refusal(&chain, cfg) {
        return Some(format!("{reason} [{chain}]"));
    }
    if chain.contains("WRONGPASS") || err.kind() == redis::ErrorKind::AuthenticationFailed {
        let user = cfg.username.clone().unwrap_or_else(|| "default".into());
        return Some(format!(
            "`sink.redis.username`/password: Redis refused the credentials of ACL user {user:?} \
             (wrong password in {ENV_REDIS_PASSWORD}, i.e. spec.redis.passwordSecretRef, unknown \
             user, or user disabled) [{chain}]"
        ));
    }
    if chain.contains("NOPERM") {
        return Some(format!(
            "`sink.redis.username`: the ACL user may not run the sink's commands; it needs at \
             least `~* +@read +@write +@transaction +@scripting +ping +info` (e.g. `ACL SETUSER name on >pw ~* \
             +@all`) [{chain}]"
        ));
    }
    None
}

/// The error and all its sources, as one line (the redis crate puts the TLS cause in a source).
fn error_chain(err: &RedisError) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

/// The user-facing reason of a TLS handshake failure, from rustls' error text.
fn tls_refusal(chain: &str, cfg: &RedisSinkConfig) -> Option<String> {
    let ca = cfg
        .tls
        .as_ref()
        .and_then(|t| t.ca_file.as_ref())
        .map(|p| format!("the CA in {}", p.display()))
        .unwrap_or_else(|| "the system's CA roots (set sink.redis.tls.caFile)".into());
    let lower = chain.to_ascii_lowercase();
    if lower.contains("expired") {
        return Some(format!(
            "`sink.redis.tls`: the Redis server's TLS certificate has expired (checked against \
             {ca}); renew the server certificate"
        ));
    }
    if lower.contains("notvalidyet") || lower.contains("not valid yet") {
        return Some(
            "`sink.redis.tls`: the Redis server's TLS certificate is not valid yet (clock skew?)"
                .into(),
        );
    }
    if lower.contains("unknownissuer")
        || lower.contains("unknown issuer")
        || lower.contains("badsignature")
    {
        return Some(format!(
            "`sink.redis.tls.caFile`: the Redis server's TLS certificate is not signed by {ca} \
             (wrong CA?)"
        ));
    }
    if lower.contains("notvalidforname") || lower.contains("not valid for name") {
        match (cfg.sentinel.is_some(), server_name(cfg)) {
            (true, Some(name)) => {
                return Some(format!(
                    "`sink.redis.tls.serverName`/`sink.redis.sentinel.nodes`: a TLS certificate \
                     does not name what it was checked against: the primary's must carry \
                     {name:?}, a sentinel's its host in `nodes`"
                ))
            }
            (true, None) => {
                return Some(
                    "`sink.redis.sentinel.nodes`: a TLS certificate does not name the address it \
                     was reached at: a sentinel's host in `nodes`, or the address the sentinels \
                     announce for the primary (an IP unless they announce host names); the \
                     certificates must carry those names or IPs, or set \
                     sink.redis.tls.serverName to the name the primary's certificate carries"
                        .into(),
                )
            }
            (false, Some(name)) => {
                return Some(format!(
                    "`sink.redis.tls.serverName`: the Redis server's TLS certificate does not \
                     carry the name {name:?}; set the name the certificate was issued for"
                ))
            }
            (false, None) => {}
        }
        return Some(format!(
            "`sink.redis.url`: the Redis server's TLS certificate does not name the host in \
             {:?}; use the host name the certificate was issued for, or set \
             sink.redis.tls.serverName to it",
            cfg.url
        ));
    }
    if lower.contains("invalid peer certificate") {
        return Some(format!(
            "`sink.redis.tls`: the Redis server's TLS certificate was refused (checked against {ca})"
        ));
    }
    if lower.contains("received fatal alert") || lower.contains("certificaterequired") {
        return Some(
            "`sink.redis.tls.certFile`/`keyFile`: the Redis server refused the TLS handshake; it \
             probably requires a client certificate (tls-auth-clients) signed by its CA"
                .into(),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RedisTlsConfig;

    fn tls_config() -> RedisSinkConfig {
        RedisSinkConfig {
            url: "rediss://redis.example:6380/0".into(),
            tls: Some(RedisTlsConfig {
                ca_file: Some("/etc/ca.crt".into()),
                ..RedisTlsConfig::default()
            }),
            ..RedisSinkConfig::default()
        }
    }

    #[test]
    fn tls_handshake_failures_name_the_field_and_the_cause() {
        let cfg = tls_config();
        let unknown = tls_refusal("invalid peer certificate: UnknownIssuer", &cfg).unwrap();
        assert!(unknown.contains("sink.redis.tls.caFile"), "{unknown}");
        assert!(unknown.contains("/etc/ca.crt"), "{unknown}");
        let expired = tls_refusal(
            "invalid peer certificate: certificate expired: verification time 1, but ...",
            &cfg,
        )
        .unwrap();
        assert!(expired.contains("expired"), "{expired}");
        let name = tls_refusal("invalid peer certificate: NotValidForName", &cfg).unwrap();
        assert!(name.contains("sink.redis.url"), "{name}");
        assert!(tls_refusal("Connection refused (os error 111)", &cfg).is_none());
    }

    #[test]
    fn a_missing_certificate_file_names_the_field_and_the_path() {
        let mut cfg = tls_config();
        cfg.tls.as_mut().unwrap().ca_file = Some("/nonexistent/streamjob/ca.crt".into());
        let err = client(&cfg).expect_err("missing CA file");
        let text = err.to_string();
        assert!(matches!(err, SinkError::Config(_)), "{text}");
        assert!(text.contains("sink.redis.tls.caFile"), "{text}");
        assert!(text.contains("/nonexistent/streamjob/ca.crt"), "{text}");
        assert!(!err.is_retryable());
    }

    #[test]
    fn the_sentinel_client_reads_the_same_tls_files_and_names_a_missing_one() {
        let mut cfg = tls_config();
        cfg.sentinel = Some(RedisSentinelConfig {
            master_name: "trace".into(),
            nodes: vec!["sentinel-0:26379".into()],
            password: None,
        });
        cfg.tls.as_mut().unwrap().ca_file = Some("/nonexistent/streamjob/ca.crt".into());
        let Err(err) = sentinel_client(&cfg, cfg.sentinel.as_ref().unwrap()) else {
            panic!("a missing CA file must be refused");
        };
        let text = err.to_string();
        assert!(matches!(err, SinkError::Config(_)), "{text}");
        assert!(text.contains("sink.redis.tls.caFile"), "{text}");
        let name = tls_refusal("invalid peer certificate: NotValidForName", &cfg).unwrap();
        assert!(name.contains("sink.redis.sentinel.nodes"), "{name}");
    }
}
