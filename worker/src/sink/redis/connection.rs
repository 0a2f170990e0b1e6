//! How the sink reaches Redis: the URL, the ACL user and password, and TLS (`rediss://` with the
//! CA, client certificate and key files from `sink.redis.tls`), plus the translation of a failed
//! connection into a message that names the field to fix.
//!
//! TLS is rustls (ring provider) through the redis crate's `tokio-rustls-comp` feature, so the
//! worker links no TLS library beyond what its image has.

use std::path::Path;

use redis::{ClientTlsConfig, IntoConnectionInfo, RedisError, TlsCertificates};

use super::SinkError;
use crate::config::{RedisSinkConfig, ENV_REDIS_PASSWORD};

/// The redis client for `cfg`. Reads the TLS files now, so a missing or unreadable file is
/// reported at start, naming the field.
pub(crate) fn client(cfg: &RedisSinkConfig) -> Result<redis::Client, SinkError> {
    let mut info = cfg
        .url
        .as_str()
        .into_connection_info()
        .map_err(|e| SinkError::Config(format!("`sink.redis.url`: {e}")))?;
    let mut settings = info.redis_settings().clone();
    if let Some(username) = cfg.username.as_deref() {
        settings = settings.set_username(username);
    }
    if let Some(password) = cfg.password.as_deref().filter(|p| !p.is_empty()) {
        settings = settings.set_password(password);
    }
    info = info.set_redis_settings(settings);
    let Some(tls) = &cfg.tls else {
        return redis::Client::open(info)
            .map_err(|e| SinkError::Config(format!("`sink.redis.url`: {e}")));
    };
    install_crypto_provider();
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
    let certificates = TlsCertificates {
        client_tls,
        root_cert,
    };
    redis::Client::build_with_tls(info, certificates)
        .map_err(|e| SinkError::Config(format!("`sink.redis.tls`: {e}")))
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
    let chain = error_chain(&err);
    if let Some(reason) = tls_refusal(&chain, cfg) {
        return SinkError::Config(format!("{reason} [{chain}]"));
    }
    if chain.contains("WRONGPASS") || err.kind() == redis::ErrorKind::AuthenticationFailed {
        let user = cfg.username.clone().unwrap_or_else(|| "default".into());
        return SinkError::Config(format!(
            "`sink.redis.username`/password: Redis refused the credentials of ACL user {user:?} \
             (wrong password in {ENV_REDIS_PASSWORD}, i.e. spec.redis.passwordSecretRef, unknown \
             user, or user disabled) [{chain}]"
        ));
    }
    if chain.contains("NOPERM") {
        return SinkError::Config(format!(
            "`sink.redis.username`: the ACL user may not run the sink's commands; it needs at \
             least `~* +@read +@write +@scripting +ping +info` (e.g. `ACL SETUSER name on >pw ~* \
             +@all`) [{chain}]"
        ));
    }
    SinkError::from(err)
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
        return Some(format!(
            "`sink.redis.url`: the Redis server's TLS certificate does not name the host in \
             {:?}; use the host name the certificate was issued for",
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
}
