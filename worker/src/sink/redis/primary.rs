//! Where the sink's connection goes: a fixed address (`sink.redis.url`), or the primary a set of
//! Redis Sentinels names (`sink.redis.sentinel`), asked again after connection errors and
//! `READONLY` replies so the sink follows a failover.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::sentinel::SentinelClient;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::apply::ApplyConnections;
use super::connection::{self, Target};
use super::{sentinel_primary, SinkError};
use crate::config::{RedisSentinelConfig, RedisSinkConfig};

/// How often at most the sentinels are asked again (or a direct connection is replaced) while
/// errors keep coming.
const RESOLVE_INTERVAL: Duration = Duration::from_millis(250);

/// The connection for claims and reads: redis-rs' `ConnectionManager`, which reconnects in the
/// background; or, with `sink.redis.tls.serverName` (which the manager cannot resolve), a
/// multiplexed connection that [`Primary::after_error`] replaces.
#[derive(Clone)]
pub(crate) enum MainConnection {
    Managed(ConnectionManager),
    Direct(MultiplexedConnection),
}

impl ConnectionLike for MainConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Managed(conn) => conn.req_packed_command(cmd),
            Self::Direct(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Managed(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Direct(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Managed(conn) => conn.get_db(),
            Self::Direct(conn) => conn.get_db(),
        }
    }
}

/// The connections in use, replaced when Sentinel names another primary: one multiplexed
/// connection for claims and reads, and the pool for applies (`apply.rs`).
#[derive(Clone)]
pub(crate) struct Primary {
    conn: Arc<RwLock<MainConnection>>,
    apply_conns: ApplyConnections,
    sentinel: Option<Arc<SentinelPrimary>>,
    manager_config: ConnectionManagerConfig,
    timeout: Duration,
    /// For the error messages of later reconnects (TLS, credentials).
    cfg: Arc<RedisSinkConfig>,
    /// When a direct main connection was last replaced.
    reconnected: Arc<Mutex<Instant>>,
}

struct SentinelPrimary {
    client: tokio::sync::Mutex<SentinelClient>,
    config: RedisSentinelConfig,
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

/// The main connection to `target`: a manager where the redis crate can reach it by itself.
async fn main_connection(
    target: &Target,
    config: ConnectionManagerConfig,
    timeout: Duration,
    cfg: &RedisSinkConfig,
) -> Result<MainConnection, SinkError> {
    if let Some(client) = target.manager_client() {
        return Ok(MainConnection::Managed(
            manager(client.clone(), config, timeout, cfg).await?,
        ));
    }
    tokio::time::timeout(timeout, target.connect(timeout))
        .await
        .map_err(|_| SinkError::timeout("connecting to redis", timeout))?
        .map(MainConnection::Direct)
        .map_err(|e| connection::explain(e, cfg))
}

async fn resolve(
    client: &mut SentinelClient,
    sentinel: &RedisSentinelConfig,
    timeout: Duration,
    cfg: &RedisSinkConfig,
) -> Result<Target, SinkError> {
    if let Some(name) = connection::server_name(cfg) {
        return sentinel_primary::sentinel_primary(client, sentinel, cfg, name, timeout).await;
    }
    let result = tokio::time::timeout(timeout, client.async_get_client())
        .await
        .map_err(|_| SinkError::timeout("asking the sentinels for the primary", timeout))?;
    // A refused TLS handshake or password (with a sentinel or with the primary it names) is a
    // configuration error; anything else may heal (no quorum yet, sentinels restarting).
    let client = result.map_err(|e| match connection::refusal(&e, cfg) {
        Some(reason) => SinkError::Config(format!("sentinels: {reason}")),
        None => SinkError::Unavailable(format!("sentinels: {e}")),
    })?;
    Target::named_by_sentinels(client, cfg)
}

impl Primary {
    pub(crate) async fn connect(
        cfg: &RedisSinkConfig,
        manager_config: ConnectionManagerConfig,
        timeout: Duration,
    ) -> Result<Self, SinkError> {
        let (target, sentinel) = match &cfg.sentinel {
            None => (connection::client(cfg)?, None),
            Some(config) => {
                let mut client = connection::sentinel_client(cfg, config)?;
                let target = resolve(&mut client, config, timeout, cfg).await?;
                let address = target.address();
                tracing::info!(master = %config.master_name, %address, "sentinels name the redis primary");
                let sentinel = SentinelPrimary {
                    client: tokio::sync::Mutex::new(client),
                    config: config.clone(),
                    resolved: Mutex::new((address, Instant::now())),
                };
                (target, Some(Arc::new(sentinel)))
            }
        };
        if let Some(name) = connection::server_name(cfg) {
            tracing::info!(server_name = name, address = %target.address(), "redis TLS certificates are checked against sink.redis.tls.serverName");
        }
        let apply_conns = ApplyConnections::new(target.clone(), timeout);
        let conn = main_connection(&target, manager_config.clone(), timeout, cfg).await?;
        Ok(Self {
            conn: Arc::new(RwLock::new(conn)),
            apply_conns,
            sentinel,
            manager_config,
            timeout,
            cfg: Arc::new(cfg.clone()),
            reconnected: Arc::new(Mutex::new(Instant::now())),
        })
    }

    /// The connection to use now (a cheap clone of a multiplexed connection).
    pub(crate) fn conn(&self) -> MainConnection {
        self.conn.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// `host:port` of the primary in use (the one the sentinels named last, with Sentinel).
    pub(crate) fn address(&self) -> String {
        self.apply_conns.target().address()
    }

    /// Whether the sentinels name the primary (else it is a fixed address).
    pub(crate) fn behind_sentinels(&self) -> bool {
        self.sentinel.is_some()
    }

    /// The pool of connections for applies, to the current primary.
    pub(crate) fn apply_conns(&self) -> &ApplyConnections {
        &self.apply_conns
    }

    /// After a failed call: with Sentinel, an unreachable or read-only server may mean a
    /// failover, so ask the sentinels again and switch to the primary they name; a direct main
    /// connection (no manager to reconnect it) is replaced. Errors here are only logged: the
    /// caller retries its call anyway.
    pub(crate) async fn after_error(&self, err: &SinkError) {
        let SinkError::Unavailable(reason) = err else {
            return;
        };
        if reason.contains("READONLY") {
            // The apply connections talk to a replica now: none of them can write.
            self.apply_conns.clear();
        }
        let switched = match &self.sentinel {
            Some(sentinel) => self.follow_sentinels(sentinel, reason).await,
            None => false,
        };
        if !switched && matches!(self.conn(), MainConnection::Direct(_)) {
            self.reconnect_direct().await;
        }
    }

    /// Asks the sentinels again (at most every [`RESOLVE_INTERVAL`]) and switches to the
    /// primary they name if it moved; whether it switched.
    async fn follow_sentinels(&self, sentinel: &SentinelPrimary, reason: &str) -> bool {
        let mut client = sentinel.client.lock().await;
        let current = {
            let resolved = sentinel.resolved.lock().unwrap_or_else(|e| e.into_inner());
            if resolved.1.elapsed() < RESOLVE_INTERVAL {
                return false;
            }
            resolved.0.clone()
        };
        let result = async {
            let target = resolve(&mut client, &sentinel.config, self.timeout, &self.cfg).await?;
            let address = target.address();
            if address == current {
                return Ok((address, false));
            }
            let conn =
                main_connection(&target, self.manager_config.clone(), self.timeout, &self.cfg)
                    .await?;
            *self.conn.write().unwrap_or_else(|e| e.into_inner()) = conn;
            self.apply_conns.switch_to(target);
            tracing::warn!(from = %current, to = %address, %reason, "redis primary changed (Sentinel failover); switched to it");
            Ok::<_, SinkError>((address, true))
        }
        .await;
        let mut resolved = sentinel.resolved.lock().unwrap_or_else(|e| e.into_inner());
        resolved.1 = Instant::now();
        match result {
            Ok((address, switched)) => {
                resolved.0 = address;
                switched
            }
            Err(err) => {
                tracing::warn!(%err, "cannot ask the sentinels for the primary yet");
                false
            }
        }
    }

    /// Replaces a direct main connection with a new one to the current primary (at most every
    /// [`RESOLVE_INTERVAL`]).
    async fn reconnect_direct(&self) {
        {
            let mut last = self.reconnected.lock().unwrap_or_else(|e| e.into_inner());
            if last.elapsed() < RESOLVE_INTERVAL {
                return;
            }
            *last = Instant::now();
        }
        let target = self.apply_conns.target();
        match main_connection(
            &target,
            self.manager_config.clone(),
            self.timeout,
            &self.cfg,
        )
        .await
        {
            Ok(conn) => *self.conn.write().unwrap_or_else(|e| e.into_inner()) = conn,
            Err(err) => {
                tracing::warn!(%err, address = %target.address(), "cannot reconnect to redis yet")
            }
        }
    }
}
