//! Where the sink's connection goes: a fixed address (`sink.redis.url`), or the primary a set of
//! Redis Sentinels names (`sink.redis.sentinel`), asked again after connection errors and
//! `READONLY` replies so the sink follows a failover.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo};

use super::apply::ApplyConnections;
use super::SinkError;
use crate::config::{RedisSentinelConfig, RedisSinkConfig};

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
    /// The primary's address and when it was last resolved.
    resolved: Mutex<(String, Instant)>,
}

fn config_error(field: &str, err: impl std::fmt::Display) -> SinkError {
    SinkError::Config(format!("{field}: {err}"))
}

/// The URL's connection info with the password from the environment.
fn direct_info(cfg: &RedisSinkConfig) -> Result<ConnectionInfo, SinkError> {
    let mut info = cfg
        .url
        .as_str()
        .into_connection_info()
        .map_err(|e| config_error("sink.redis.url", e))?;
    if let Some(password) = cfg.password.as_deref().filter(|p| !p.is_empty()) {
        let settings = info.redis_settings().clone().set_password(password);
        info = info.set_redis_settings(settings);
    }
    Ok(info)
}

fn sentinel_client(
    cfg: &RedisSinkConfig,
    sentinel: &RedisSentinelConfig,
) -> Result<SentinelClient, SinkError> {
    let db = direct_info(cfg)?.redis_settings().db();
    let mut nodes = Vec::with_capacity(sentinel.nodes.len());
    for node in &sentinel.nodes {
        let (host, port) = node
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host.to_string(), port.parse::<u16>().ok()?)))
            .ok_or_else(|| config_error("sink.redis.sentinel.nodes", format!("{node:?}")))?;
        nodes.push(ConnectionAddr::Tcp(host, port));
    }
    let mut builder =
        SentinelClientBuilder::new(nodes, &sentinel.master_name, SentinelServerType::Master)
            .map_err(|e| config_error("sink.redis.sentinel", e))?
            .set_client_to_redis_db(db);
    if let Some(password) = cfg.password.as_deref().filter(|p| !p.is_empty()) {
        builder = builder.set_client_to_redis_password(password);
    }
    if let Some(password) = sentinel.password.as_deref().filter(|p| !p.is_empty()) {
        builder = builder.set_client_to_sentinel_password(password);
    }
    builder
        .build()
        .map_err(|e| config_error("sink.redis.sentinel", e))
}

async fn manager(
    client: redis::Client,
    config: ConnectionManagerConfig,
    timeout: Duration,
) -> Result<ConnectionManager, SinkError> {
    tokio::time::timeout(timeout, ConnectionManager::new_with_config(client, config))
        .await
        .map_err(|_| SinkError::timeout("connecting to redis", timeout))?
        .map_err(SinkError::from)
}

async fn resolve(
    client: &mut SentinelClient,
    timeout: Duration,
) -> Result<redis::Client, SinkError> {
    tokio::time::timeout(timeout, client.async_get_client())
        .await
        .map_err(|_| SinkError::timeout("asking the sentinels for the primary", timeout))?
        .map_err(|e| SinkError::Unavailable(format!("sentinels: {e}")))
}

impl Primary {
    pub(crate) async fn connect(
        cfg: &RedisSinkConfig,
        manager_config: ConnectionManagerConfig,
        timeout: Duration,
    ) -> Result<Self, SinkError> {
        let Some(sentinel) = &cfg.sentinel else {
            let client = redis::Client::open(direct_info(cfg)?)
                .map_err(|e| config_error("sink.redis.url", e))?;
            let apply_conns = ApplyConnections::new(client.clone(), timeout);
            let conn = manager(client, manager_config, timeout).await?;
            return Ok(Self {
                conn: Arc::new(RwLock::new(conn)),
                apply_conns,
                sentinel: None,
            });
        };
        let mut client = sentinel_client(cfg, sentinel)?;
        let primary = resolve(&mut client, timeout).await?;
        let address = primary.get_connection_info().addr().to_string();
        tracing::info!(master = %sentinel.master_name, %address, "sentinels name the redis primary");
        let apply_conns = ApplyConnections::new(primary.clone(), timeout);
        let conn = manager(primary, manager_config.clone(), timeout).await?;
        Ok(Self {
            conn: Arc::new(RwLock::new(conn)),
            apply_conns,
            sentinel: Some(Arc::new(SentinelPrimary {
                client: tokio::sync::Mutex::new(client),
                manager_config,
                timeout,
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
            let primary = resolve(&mut client, sentinel.timeout).await?;
            let address = primary.get_connection_info().addr().to_string();
            if address != current {
                let apply_client = primary.clone();
                let conn =
                    manager(primary, sentinel.manager_config.clone(), sentinel.timeout).await?;
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
