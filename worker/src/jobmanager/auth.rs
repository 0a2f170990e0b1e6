//! Bearer-token check of the mutating REST endpoints (savepoint and checkpoint triggers,
//! stop-with-savepoint). GETs, the trace reads and the taskmanager protocol stay open.
//!
//! The token comes from `jobmanager.apiToken` (env `STREAMJOB_API_TOKEN`), else from the file
//! `jobmanager.apiTokenFile`, read at every check so a rotated Secret volume applies at once.
//! Neither set: the API is open (a laptop, a test). A configured file that cannot be read
//! refuses every mutating call (fail closed).

use axum::http::{header, HeaderMap};
use subtle::ConstantTimeEq;

use crate::config::JobManagerConfig;

/// Why a mutating call is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "this endpoint changes the job and needs its API token: send `Authorization: Bearer \
         <token>` (on Kubernetes the token is in the Secret `<job>-api-token`, key `token`)"
    )]
    Missing,
    #[error("the bearer token is not this job's API token; nothing was changed")]
    Wrong,
    #[error("the API token file {path} cannot be read ({reason}); mutating calls are refused")]
    Unreadable { path: String, reason: String },
}

/// The configured token, if any.
pub async fn configured_token(config: &JobManagerConfig) -> Result<Option<String>, AuthError> {
    if let Some(token) = config.api_token.as_deref().filter(|t| !t.is_empty()) {
        return Ok(Some(token.to_string()));
    }
    let Some(path) = &config.api_token_file else {
        return Ok(None);
    };
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| AuthError::Unreadable {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(AuthError::Unreadable {
            path: path.display().to_string(),
            reason: "it is empty".into(),
        });
    }
    Ok(Some(token.to_string()))
}

/// Whether a token is configured (the dashboard asks for one only then).
pub fn token_configured(config: &JobManagerConfig) -> bool {
    config.api_token.as_deref().is_some_and(|t| !t.is_empty()) || config.api_token_file.is_some()
}

/// Checks the request's bearer token against the configured one.
pub async fn authorize(config: &JobManagerConfig, headers: &HeaderMap) -> Result<(), AuthError> {
    let Some(expected) = configured_token(config).await? else {
        return Ok(());
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .ok_or(AuthError::Missing)?;
    if bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(AuthError::Wrong)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(value: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(v) = value {
            headers.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(v).expect("ascii"),
            );
        }
        headers
    }

    #[tokio::test]
    async fn no_token_configured_means_open() {
        let config = JobManagerConfig::default();
        assert_eq!(authorize(&config, &headers(None)).await, Ok(()));
    }

    #[tokio::test]
    async fn a_configured_token_must_be_presented_exactly() {
        let config = JobManagerConfig {
            api_token: Some("s3cret".into()),
            ..JobManagerConfig::default()
        };
        assert_eq!(
            authorize(&config, &headers(None)).await,
            Err(AuthError::Missing)
        );
        assert_eq!(
            authorize(&config, &headers(Some("Basic s3cret"))).await,
            Err(AuthError::Missing)
        );
        assert_eq!(
            authorize(&config, &headers(Some("Bearer s3cre"))).await,
            Err(AuthError::Wrong)
        );
        assert_eq!(
            authorize(&config, &headers(Some("bearer s3cret"))).await,
            Ok(())
        );
    }

    #[tokio::test]
    async fn the_token_file_is_read_at_each_check_and_fails_closed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        let config = JobManagerConfig {
            api_token_file: Some(path.clone()),
            ..JobManagerConfig::default()
        };
        assert!(matches!(
            authorize(&config, &headers(Some("Bearer x"))).await,
            Err(AuthError::Unreadable { .. })
        ));
        std::fs::write(&path, "one\n").expect("write");
        assert_eq!(
            authorize(&config, &headers(Some("Bearer one"))).await,
            Ok(())
        );
        std::fs::write(&path, "two").expect("write");
        assert_eq!(
            authorize(&config, &headers(Some("Bearer one"))).await,
            Err(AuthError::Wrong)
        );
        assert_eq!(
            authorize(&config, &headers(Some("Bearer two"))).await,
            Ok(())
        );
    }
}
