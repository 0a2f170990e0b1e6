//! The sink's one view of where Redis is: a single node (`sink.redis.url`), the primary a set of
//! Sentinels names (`sink.redis.sentinel`), or a Redis Cluster (`sink.redis.cluster`). Two
//! questions cover everything outside the apply: where a key lives ([`Topology::place`]), and
//! a connection to that place ([`Topology::conn`]); [`Topology::query`] asks both and follows
//! the topology's redirects (a Sentinel failover, a cluster's `MOVED` and `ASK`).
//!
//! The batch builder and the layout never see it: they produce native commands on austin's key
//! names, and only the apply side differs — one fenced `MULTI`/`EXEC` on the one primary
//! (`apply.rs`), or one unit per cluster primary with per-slot fences (`cluster/`). Claims and
//! fence reads dispatch the same way in the sink (`mod.rs`); every other read (the series'
//! final watermark, the trace read side) goes through [`Topology::query`] and works on every
//! topology alike. [`Topology::describe`] says what it is, for users (the job overview, the
//! StreamJob's status, the metrics).

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Cmd, Pipeline, RedisFuture, Value};

use redis::aio::ConnectionManagerConfig;

use super::cluster::nodes::Nodes;
use super::cluster::seeds::check_seeds;
use super::primary::{MainConnection, Primary};
use super::SinkError;
use crate::api::{RedisMode, RedisTopology};
use crate::config::RedisSinkConfig;

/// Where Redis is.
#[derive(Clone)]
pub(crate) enum Topology {
    /// One primary: a fixed address, or the one the sentinels name (followed on failover).
    Single(Box<Primary>),
    /// A Redis Cluster: a primary per slot range.
    Cluster(Arc<Nodes>),
}

/// Where a key lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Place {
    /// The one primary (single node, Sentinel).
    Primary,
    /// The cluster primary at `host:port` that serves the key's slot.
    Node(String),
}

/// A connection to a [`Place`].
#[derive(Clone)]
pub(crate) enum PlaceConnection {
    Primary(MainConnection),
    Node(MultiplexedConnection),
}

impl ConnectionLike for PlaceConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Primary(conn) => conn.req_packed_command(cmd),
            Self::Node(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Primary(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Node(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Primary(conn) => conn.get_db(),
            Self::Node(conn) => conn.get_db(),
        }
    }
}

impl Topology {
    /// Connects to what `cfg` names: a cluster's seeds are asked whether they are cluster
    /// nodes (one clear refusal otherwise), then the slot map is read.
    pub(crate) async fn connect(
        cfg: &RedisSinkConfig,
        manager_config: ConnectionManagerConfig,
        timeout: Duration,
    ) -> Result<Self, SinkError> {
        let Some(cluster) = &cfg.cluster else {
            return Ok(Self::Single(Box::new(
                Primary::connect(cfg, manager_config, timeout).await?,
            )));
        };
        let seed = check_seeds(cfg, cluster, timeout).await?;
        let mut seeds = vec![seed];
        seeds.extend(cluster.nodes.iter().cloned());
        Ok(Self::Cluster(Arc::new(
            Nodes::connect(cfg, seeds, timeout).await?,
        )))
    }

    /// Where `key` lives (for a cluster, as the slot map last read says).
    pub(crate) fn place(&self, key: &[u8]) -> Result<Place, SinkError> {
        match self {
            Self::Single(_) => Ok(Place::Primary),
            Self::Cluster(nodes) => nodes.place(key).map(Place::Node),
        }
    }

    /// A connection to `place`.
    pub(crate) async fn conn(&self, place: &Place) -> Result<PlaceConnection, SinkError> {
        match (self, place) {
            (Self::Single(primary), _) => Ok(PlaceConnection::Primary(primary.conn())),
            (Self::Cluster(nodes), Place::Node(address)) => {
                Ok(PlaceConnection::Node(nodes.conn(address).await?))
            }
            (Self::Cluster(_), Place::Primary) => Err(SinkError::Script(
                "a cluster has no single primary: place the key first".into(),
            )),
        }
    }

    /// Runs `cmd`, whose keys all live where `key` does, within `timeout`; after an error,
    /// lets the topology follow a failover or a moved slot.
    pub(crate) async fn query(
        &self,
        key: &[u8],
        cmd: &Cmd,
        what: &str,
        timeout: Duration,
    ) -> Result<Value, SinkError> {
        if let Self::Cluster(nodes) = self {
            return nodes.query(key, cmd, what).await;
        }
        let mut conn = self.conn(&self.place(key)?).await?;
        let result = match tokio::time::timeout(timeout, cmd.query_async::<Value>(&mut conn)).await
        {
            Err(_) => Err(SinkError::timeout(what, timeout)),
            Ok(result) => result.map_err(SinkError::from),
        };
        if let Err(err) = &result {
            self.after_error(err).await;
        }
        result
    }

    /// What users are shown of the topology, read at `now_ms` (see `api::RedisTopology`). A
    /// single primary needs no call; a cluster is asked for its slot map and migrations.
    pub(crate) async fn describe(&self, now_ms: u64) -> Result<RedisTopology, SinkError> {
        let (mode, primaries, migrating) = match self {
            Self::Single(primary) => {
                let mode = match primary.behind_sentinels() {
                    true => RedisMode::Sentinel,
                    false => RedisMode::Single,
                };
                (mode, vec![primary.address()], 0)
            }
            Self::Cluster(nodes) => {
                let shape = nodes.shape().await?;
                let migrating = u32::try_from(shape.migrating.len()).unwrap_or(u32::MAX);
                (RedisMode::Cluster, shape.primaries, migrating)
            }
        };
        Ok(RedisTopology {
            mode,
            shards: u32::try_from(primaries.len()).unwrap_or(u32::MAX),
            primaries,
            migrating_slots: migrating,
            last_refresh_ms: now_ms,
        })
    }

    /// After a failed call on the single primary: follow the sentinels, or reconnect. A
    /// cluster's nodes do this per call.
    pub(crate) async fn after_error(&self, err: &SinkError) {
        if let Self::Single(primary) = self {
            primary.after_error(err).await;
        }
    }
}
