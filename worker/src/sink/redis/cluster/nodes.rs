//! The cluster's nodes as the sink sees them: the slot map (`CLUSTER SLOTS`, read again when a
//! node answers `MOVED`, refuses a slot it no longer serves, or goes away) and one multiplexed
//! connection per primary, opened with the TLS, user and password of `sink.redis.url`
//! (`seeds::node_target`). Shared by every partition's owner and by the reads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{Cmd, ErrorKind, ServerErrorKind, Value};

use super::plan::SlotMap;
use super::seeds::node_target;
use super::slot::key_slot;
use crate::config::RedisSinkConfig;
use crate::sink::redis::connection;
use crate::sink::redis::SinkError;

/// How many `MOVED` answers one read follows before it gives up (retryable).
const REDIRECTS: usize = 5;

/// The slot map and the connections to the primaries it names.
pub struct Nodes {
    cfg: Option<Arc<RedisSinkConfig>>,
    /// Where to read the slot map from when every primary of the last map fails: the seeds.
    seeds: Vec<String>,
    map: RwLock<Arc<SlotMap>>,
    conns: Mutex<HashMap<String, MultiplexedConnection>>,
    timeout: Duration,
}

impl std::fmt::Debug for Nodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nodes")
            .field("seeds", &self.seeds)
            .field("primaries", &self.map().nodes())
            .finish_non_exhaustive()
    }
}

impl Nodes {
    /// Reads the slot map from the first seed that answers.
    pub(crate) async fn connect(
        cfg: &RedisSinkConfig,
        seeds: Vec<String>,
        timeout: Duration,
    ) -> Result<Self, SinkError> {
        let nodes = Self {
            cfg: Some(Arc::new(cfg.clone())),
            seeds,
            map: RwLock::new(Arc::new(SlotMap::empty())),
            conns: Mutex::default(),
            timeout,
        };
        nodes.refresh_map().await?;
        Ok(nodes)
    }

    /// Plain connections (no TLS, no user) to the primaries `map` names: tests and tools.
    pub fn plain(map: SlotMap, timeout: Duration) -> Self {
        Self {
            cfg: None,
            seeds: map.nodes().to_vec(),
            map: RwLock::new(Arc::new(map)),
            conns: Mutex::default(),
            timeout,
        }
    }

    /// The slot map as last read.
    pub fn map(&self) -> Arc<SlotMap> {
        self.map.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The limit of each call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A connection to the node at `address` (opened on first use).
    pub async fn conn(&self, address: &str) -> Result<MultiplexedConnection, SinkError> {
        if let Some(conn) = self.lock_conns().get(address) {
            return Ok(conn.clone());
        }
        let conn = match &self.cfg {
            Some(cfg) => {
                let target = node_target(cfg, address)?;
                tokio::time::timeout(self.timeout, target.connect(self.timeout))
                    .await
                    .map_err(|_| SinkError::timeout("connecting to a cluster node", self.timeout))?
                    .map_err(|e| connection::explain(e, cfg))?
            }
            None => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout));
                redis::Client::open(format!("redis://{address}/"))
                    .map_err(|e| SinkError::Config(format!("`sink.redis.cluster.nodes`: {e}")))?
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?
            }
        };
        self.lock_conns().insert(address.to_string(), conn.clone());
        Ok(conn)
    }

    /// Drops the connection to `address` (after an error on it); the next call opens another.
    pub fn forget(&self, address: &str) {
        self.lock_conns().remove(address);
    }

    fn lock_conns(&self) -> std::sync::MutexGuard<'_, HashMap<String, MultiplexedConnection>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The primary that serves `key`'s slot, as the map says.
    pub fn place(&self, key: &[u8]) -> Result<String, SinkError> {
        let slot = key_slot(key);
        self.map()
            .owner(slot)
            .map(str::to_string)
            .ok_or_else(|| SinkError::Unavailable(format!("no primary serves slot {slot}")))
    }

    /// Runs a command on `key`'s primary. `MOVED` reads the map again and retries; `ASK` (a
    /// slot in migration whose key already left) sends the command once to the importing node
    /// with `ASKING`, as Redis Cluster clients do: single-key commands only, never a unit.
    pub async fn query(&self, key: &[u8], cmd: &Cmd, what: &str) -> Result<Value, SinkError> {
        let mut address = self.place(key)?;
        for _ in 0..REDIRECTS {
            let mut conn = self.conn(&address).await?;
            let result = match tokio::time::timeout(self.timeout, cmd.query_async(&mut conn)).await
            {
                Ok(result) => result,
                Err(_) => {
                    self.forget(&address);
                    return Err(SinkError::timeout(what, self.timeout));
                }
            };
            let err = match result {
                Ok(value) => return Ok(value),
                Err(err) => err,
            };
            match (err.kind(), err.redirect_node()) {
                (ErrorKind::Server(ServerErrorKind::Moved), Some(_)) => {
                    self.refresh_map().await?;
                    address = self.place(key)?;
                }
                (ErrorKind::Server(ServerErrorKind::Ask), Some((target, _))) => {
                    let mut conn = self.conn(target).await?;
                    let mut pipe = redis::pipe();
                    pipe.cmd("ASKING").ignore().add_command(cmd.clone());
                    let asked = tokio::time::timeout(self.timeout, pipe.query_async(&mut conn));
                    let replies: Vec<Value> = asked
                        .await
                        .map_err(|_| SinkError::timeout(what, self.timeout))??;
                    return replies.into_iter().next().ok_or_else(|| {
                        SinkError::Script(format!("{what}: no reply after ASKING"))
                    });
                }
                _ => {
                    let err = SinkError::from(err);
                    if err.is_retryable() {
                        self.forget(&address);
                        // A failover: where the slot lives now.
                        let _ = self.refresh_map().await;
                    }
                    return Err(err);
                }
            }
        }
        Err(SinkError::Unavailable(format!(
            "{what}: still redirected after {REDIRECTS} slot map reads"
        )))
    }

    /// Reads the slot map again, from any primary of the last map that answers, else a seed.
    pub async fn refresh_map(&self) -> Result<(), SinkError> {
        let map = self.read_map().await?;
        *self.map.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
        Ok(())
    }

    /// The slot map as the cluster answers now (one that covers every slot), without putting
    /// it in place of the one in use.
    pub(crate) async fn read_map(&self) -> Result<SlotMap, SinkError> {
        let mut last = SinkError::Unavailable("no cluster node answers".into());
        let mut candidates = self.map().nodes().to_vec();
        candidates.extend(self.seeds.iter().cloned());
        candidates.dedup();
        for address in candidates {
            let reply = match self.conn(&address).await {
                Ok(mut conn) => {
                    let mut slots = redis::cmd("CLUSTER");
                    slots.arg("SLOTS");
                    let ask = slots.query_async::<Value>(&mut conn);
                    match tokio::time::timeout(self.timeout, ask).await {
                        Ok(reply) => reply.map_err(SinkError::from),
                        Err(_) => Err(SinkError::timeout("CLUSTER SLOTS", self.timeout)),
                    }
                }
                Err(err @ SinkError::Config(_)) => return Err(err),
                Err(err) => Err(err),
            };
            match reply.and_then(|reply| SlotMap::from_slots_reply_at(&reply, &address)) {
                Ok(map) if map.covers_every_slot() => return Ok(map),
                Ok(_) => {
                    last = SinkError::Unavailable(format!(
                        "{address}: some slots have no primary (CLUSTERDOWN while a failover runs)"
                    ));
                }
                Err(err) => {
                    self.forget(&address);
                    last = err;
                }
            }
        }
        Err(last)
    }
}
