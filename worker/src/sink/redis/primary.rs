//! Where the sink's connection goes: a fixed address (`sink.redis.url`), or the primary a set of
//! Redis Sentinels names (`sink.redis.sentinel`), asked again after connection errors and
//! `READONLY` replies so the sink follows a failover.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::SentinelClient;

use super::apply::ApplyConnections;
use super::{connection, SinkError};
use crate::config::RedisSinkConfig;

/// How often at most the sentinels are asked again while errors keep coming.
const RESOLVE_INTERVAL: Duration = Duration::from_millis(250);

/// The connections in use, replaced when Sentinel names another primary: one multiplexed
/// connection for claims and reads, and the pool for applies (`apply.rs`).
#[derive(Clone)]
pub(crate) struct Primary {
    conn: Arc<RwLock<ConnectionManager>>,
    apply_conns: ApplyConnections,
    sentinel: Option<Arc<SentinelPrimary>>,
}

struct SentinelPrimary {
    client: tokio::sync::Mutex<SentinelClient>,
    manager_config: ConnectionManagerConfig,
    timeout: Duration,
    /// For the error messages of later reconnects (TLS, credentials).
    cfg: RedisSinkConfig,
    /// The primary's address and when it was last resolved.
    resolved: Mutex<(String, Instant)>,
}

async fn manager(
    client: redis::Client,
    config: ConnectionManagerConfig,
    timeout: Duration,
    cfg: &RedisSinkConfig,
) -> Result<ConnectionManager, SinkError> {
    tokio::time::timeout(timeout, ConnectionManager::new_with_config(client, config))
        .await
        .map_err(|_| SinkError::timeout("connecting to redis", timeout))?
        .map_err(|e| connection::explain(e, cfg))
}

async fn resolve(
    client: &mut SentinelClient,
    timeout: Duration,
    cfg: &RedisSinkConfig,
) -> Result<redis::Client, SinkError> {
    let result = tokio::time::timeout(timeout, client.async_get_client())
        .await
        .map_err(|_| SinkError::timeout("asking the sentinels for the primary", timeout))?;
    // A refused TLS handshake or password (with a sentinel or with the primary it names) is a
    // configuration error; anything else may heal (no quorum yet, sentinels restarting).
    result.map_err(|e| match connection::refusal(&e, cfg) {
        Some(reason) => SinkError::Config(format!("sentinels: {reason}")),
        None => SinkError::Unavailable(format!("sentinels: {e}")),
    })
}

impl Primary {
    pub(crate) async fn connect(
        cfg: &RedisSinkConfig,
        manager_config: ConnectionManagerConfig,
        timeout: Duration,
    ) -> Result<Self, SinkError> {
        let Some(sentinel) = &cfg.sentinel else {
            let client = connection::client(cfg)?;
            let apply_conns = ApplyConnections::new(client.clone(), timeout);
            let conn = manager(client, manager_config, timeout, cfg).await?;
            return Ok(Self {
                conn: Arc::new(RwLock::new(conn)),
                apply_conns,
                sentinel: None,
            });
        };
        let mut client = connection::sentinel_client(cfg, sentinel)?;
        let primary = resolve(&mut client, timeout, cfg).await?;
        let address = primary.get_connection_info().addr().to_string();
        tracing::info!(master = %sentinel.master_name, %address, "sentinels name the redis primary");
        let apply_conns = ApplyConnections::new(primary.clone(), timeout);
        let conn = manager(primary, manager_config.clone(), timeout, cfg).await?;
        Ok(Self {
            conn: Arc::new(RwLock::new(conn)),
            apply_conns,
            sentinel: Some(Arc::new(SentinelPrimary {
                client: tokio::sync::Mutex::new(client),
                manager_config,
                timeout,
                cfg: cfg.clone(),
                resolved: Mutex::new((address, Instant::now())),
            })),
        })
    }

    /// The connection to use now (a cheap clone of a multiplexed connection).
    pub(crate) fn conn(&self) -> ConnectionManager {
        self.conn.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The pool of connections for applies, to the current primary.
    pub(crate) fn apply_conns(&self) -> &ApplyConnections {
        &self.apply_conns
    }

    /// After a failed call: with Sentinel, an unreachable or read-only server may mean a
    /// failover, so ask the sentinels again and switch to the primary they name. Errors here are
    /// only logged: the caller retries its call anyway.
    pub(crate) async fn after_error(&self, err: &SinkError) {
        let SinkError::Unavailable(reason) = err else {
            return;
        };
        if reason.contains("READONLY") {
            // The apply connections talk to a replica now: none of them can write.
            self.apply_conns.clear();
        }
        let Some(sentinel) = &self.sentinel else {
            return;
        };
        let mut client = sentinel.client.lock().await;
        let current = {
            let resolved = sentinel.resolved.lock().unwrap_or_else(|e| e.into_inner());
            if resolved.1.elapsed() < RESOLVE_INTERVAL {
                return;
            }
            resolved.0.clone()
        };
        let result = async {
            let primary = resolve(&mut client, sentinel.timeout, &sentinel.cfg).await?;
            let address = primary.get_connection_info().addr().to_string();
            if address != current {
                let apply_client = primary.clone();
                let conn = manager(
                    primary,
                    sentinel.manager_config.clone(),
                    sentinel.timeout,
                    &sentinel.cfg,
                )
                .await?;
                *self.conn.write().unwrap_or_else(|e| e.into_inner()) = conn;
                self.apply_conns.switch_to(apply_client);
                tracing::warn!(from = %current, to = %address, %reason, "redis primary changed (Sentinel failover); switched to it");
            }
            Ok::<_, SinkError>(address)
        }
        .await;
        let mut resolved = sentinel.resolved.lock().unwrap_or_else(|e| e.into_inner());
        resolved.1 = Instant::now();
        match result {
            Ok(address) => resolved.0 = address,
            Err(err) => tracing::warn!(%err, "cannot ask the sentinels for the primary yet"),
        }
    }
}
