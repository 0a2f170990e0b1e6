//! The exactly-once Redis sink.
//!
//! Every partition has a fence hash `{prefix}streamjob:{job}:fence:{topic}:{partition}` →
//! `{epoch, next_offset}`. An owner [`RedisSink::claim_from`]s the partition (raising the epoch,
//! which shuts out every older owner, and writing `next_offset` if the fence has none) and resumes
//! at the fence's `next_offset`. Each [`Batch`] is applied atomically with a check of its fence
//! (`apply.rs`: `WATCH` the fence, read it, decide, then the batch's native commands in one
//! `MULTI`/`EXEC` that moves the fence last): refused if the stored epoch is newer
//! ([`SinkError::Fenced`]); refused if the fence has no `next_offset` or ends before the batch
//! ([`SinkError::Gap`]: Redis lost acknowledged writes, the partition rewinds); skipped if
//! `next_offset` is already past it ([`ApplyOutcome::AlreadyApplied`]); refused if the fence lies
//! strictly inside it ([`SinkError::Overlap`], never a partial re-apply); otherwise all its merged
//! writes run and `next_offset` moves to the batch's end.
//!
//! # Epochs survive a rollback
//!
//! A claim's epoch is `max(stored + 1, generation << 20)`, where `generation` is the jobmanager's
//! assignment generation (strictly increasing per assignment, kept in checkpoints and re-learnt
//! from re-registering owners). If Redis rolls the fence back, `stored + 1` may be below epochs
//! earlier owners used, but `generation << 20` is not: an earlier owner's epoch is at most
//! `(its generation + 1) << 20 - 1` (it started at `its generation << 20` or at `stored + 1`,
//! and fewer than 2^20 claims happen per generation), which is below the new floor. So once a
//! claim is in Redis, no earlier owner can write, whatever Redis lost before it.
//!
//! The sink holds one multiplexed connection (redis-rs `ConnectionManager`, which reconnects
//! in the background after the server goes away; with `sink.redis.tls.serverName` a plain one
//! the sink replaces after errors, see `server_name.rs`) for claims and reads, and a small pool of
//! connections for applies (`WATCH` is per connection); every call has a timeout, so a hung Redis
//! becomes a retryable [`SinkError::Unavailable`]. With `sink.redis.sentinel` the connections go
//! to the primary the sentinels name, and are replaced when they name another one (`primary.rs`).
//!
//! With `sink.redis.cluster` the sink writes to a Redis Cluster: every slot has its own fence,
//! and a batch is applied as one unit per primary (`cluster/mod.rs` has that protocol and why it
//! holds through resharding, failover and restarts). Which of the three topologies the sink runs
//! on is decided once, in `topology.rs`; the batch builder and the layout never learn it.

mod apply;
mod batch;
mod checked_expiries;
pub mod cluster;
mod connection;
mod error;
mod layout;
mod primary;
mod resp;
mod resp_connection;
mod script;
mod sentinel_primary;
mod series;
mod server_name;
mod topology;
pub mod window;
mod writes;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::ConnectionManagerConfig;
use redis::{Cmd, Value};
use tracing::Instrument;

pub use batch::{Batch, BatchBuilder};
use checked_expiries::CheckedExpiries;
pub use error::SinkError;
pub use layout::{system_time_ms, Layout, MESSAGE_KEY_PREFIX, MESSAGE_TTL, TEMPLATE_TTL};

use crate::config::RedisSinkConfig;
pub(crate) use primary::Primary;
use script::{parse_claim_reply, ApplyReply, ClaimReply, LuaScript, CLAIM_SCRIPT};
pub(crate) use topology::Topology;

/// Default limit for one Redis round trip (including a batch's script run).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A partition's fence as stored in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    /// The owner generation allowed to write.
    pub epoch: u64,
    /// Every offset below this is applied; `None` before the first batch.
    pub next_offset: Option<i64>,
    /// The partition's event-time clock stored with `next_offset` (largest event time applied;
    /// see [`window`]); `None` before the first batch with events.
    pub max_event_ms: Option<i64>,
    /// The job watermark the partition's last batch with events decided its series with.
    pub learned_ms: Option<i64>,
}

impl Fence {
    /// What the fence stores of the event-time series.
    pub fn series_marks(&self) -> window::SeriesMarks {
        window::SeriesMarks {
            clock: self.max_event_ms,
            learned: self.learned_ms,
        }
    }
}

/// The lowest epoch a claim for assignment `generation` takes (see the module documentation).
pub fn epoch_floor(generation: u64) -> u64 {
    generation.min(1 << 32) << 20
}

/// What a claim found and wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// The fence after the claim.
    pub fence: Fence,
    /// The fence had no `next_offset` (never claimed, or lost by Redis): the claim wrote the
    /// caller's `resume_if_missing`, if any.
    pub was_missing: bool,
}

/// What applying a batch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// Written; `commands` counts the Redis commands the script ran (fence included).
    /// `write_errors` counts data writes Redis refused (e.g. `WRONGTYPE` on a key of another
    /// type): skipped like upstream skipped them, and logged.
    Applied {
        events: usize,
        commands: usize,
        write_errors: usize,
    },
    /// The fence is already at or past the batch's end: a replay, nothing written.
    AlreadyApplied,
}

/// Tunables that are not part of `job.yaml`.
#[derive(Debug, Clone)]
pub struct SinkOptions {
    /// Limit for each call (connect, claim, read, apply).
    pub call_timeout: Duration,
    /// The first time this process pushes to a user list on a given day, set its expiry to
    /// tonight's midnight even if it already had another one (`PEXPIREAT`): lists this sink
    /// creates always carry the right expiry, so only lists written by someone else can differ
    /// — upstream's 52-year-TTL keys while migrating from austin's Flink job. Later batches of
    /// the day skip the list (`checked_expiries.rs`). Off: that first touch uses
    /// `PEXPIREAT … NX`, which gives an expiry only to a list without one. Default: on.
    pub verify_existing_user_expiry: bool,
}

impl Default for SinkOptions {
    fn default() -> Self {
        Self {
            call_timeout: DEFAULT_CALL_TIMEOUT,
            verify_existing_user_expiry: true,
        }
    }
}

/// Clone-able handle over one persistent multiplexed connection.
#[derive(Clone)]
pub struct RedisSink {
    topology: Topology,
    /// Claims and applies on a cluster (`None` on a single node or behind Sentinel).
    cluster: Option<Arc<cluster::sink::ClusterSink>>,
    layout: Layout,
    timeout: Duration,
    checked: Arc<Mutex<CheckedExpiries>>,
}

impl std::fmt::Debug for RedisSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSink")
            .field("layout", &self.layout)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisSink {
    /// Connects (with the default options) and loads the scripts.
    pub async fn connect(cfg: &RedisSinkConfig, job: &str, topic: &str) -> Result<Self, SinkError> {
        Self::connect_with(cfg, job, topic, SinkOptions::default()).await
    }

    pub async fn connect_with(
        cfg: &RedisSinkConfig,
        job: &str,
        topic: &str,
        options: SinkOptions,
    ) -> Result<Self, SinkError> {
        let layout = Layout::from_config(cfg, job, topic)?
            .with_verify_existing_user_expiry(options.verify_existing_user_expiry);
        let timeout = options.call_timeout;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(3)
            .set_max_delay(Duration::from_secs(1));
        let topology = Topology::connect(cfg, manager_config, timeout).await?;
        if let Topology::Cluster(nodes) = &topology {
            let cluster = cluster::sink::ClusterSink::new(nodes.clone(), layout.clone());
            return Ok(Self {
                cluster: Some(Arc::new(cluster)),
                topology,
                layout,
                timeout,
                checked: Arc::default(),
            });
        }
        let sink = Self {
            topology,
            cluster: None,
            layout,
            timeout,
            checked: Arc::default(),
        };
        let ready = async {
            sink.refuse_a_cluster_node().await?;
            sink.load_scripts().await
        };
        ready.await.map_err(|e| match e {
            // The first command is where an ACL user without the needed permissions shows.
            SinkError::Config(message) => SinkError::Config(format!("sink.redis: {message}")),
            other => other,
        })?;
        Ok(sink)
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// A builder for one batch of `partition`, owned at `epoch`.
    pub fn batch_builder(&self, partition: i32, epoch: u64) -> BatchBuilder {
        BatchBuilder::new(partition, epoch, &self.layout, Arc::clone(&self.checked))
    }

    /// Which topology the sink writes to: `single` (also behind Sentinel) or `cluster`.
    pub fn topology(&self) -> &'static str {
        match self.topology {
            Topology::Single(_) => "single",
            Topology::Cluster(_) => "cluster",
        }
    }

    /// The topology as it stands now (a cluster is asked for its slot map and migrations;
    /// see `api::RedisTopology`).
    pub async fn describe_topology(&self) -> Result<crate::api::RedisTopology, SinkError> {
        let now_ms = u64::try_from(system_time_ms(std::time::SystemTime::now())).unwrap_or(0);
        self.topology.describe(now_ms).await
    }

    /// On a cluster, counts each apply's waits (`TRYAGAIN`, `ASK`, `MOVED`, re-reads, nodes
    /// down) by kind in `family`.
    pub fn count_cluster_waits_in(
        &self,
        family: prometheus_client::metrics::family::Family<
            crate::metrics::KindLabel,
            prometheus_client::metrics::counter::Counter,
        >,
    ) {
        if let Some(cluster) = &self.cluster {
            cluster.count_waits_in(family);
        }
    }

    /// The offsets after `from` at which the partition's batches must end: on a cluster, where
    /// some slot's fence begins or ends (so no slot ever holds part of a batch); none on a
    /// single node.
    pub async fn cuts(&self, partition: i32, from: i64) -> Vec<i64> {
        match &self.cluster {
            None => Vec::new(),
            Some(cluster) => cluster.cuts(partition, from).await,
        }
    }

    fn primary(&self) -> Result<&Primary, SinkError> {
        match &self.topology {
            Topology::Single(primary) => Ok(primary),
            Topology::Cluster(_) => Err(SinkError::Script(
                "a single-node call was made on a cluster".into(),
            )),
        }
    }

    /// A cluster node behind a single-node configuration would answer `MOVED` for most keys:
    /// refused at once with what to configure instead (`cluster/seeds.rs`).
    async fn refuse_a_cluster_node(&self) -> Result<(), SinkError> {
        let mut info = redis::cmd("INFO");
        info.arg("cluster");
        let reply = self.query(b"", &info, "INFO cluster").await?;
        let text = match &reply {
            Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            Value::VerbatimString { text, .. } => text.clone(),
            _ => String::new(),
        };
        match cluster::seeds::cluster_enabled(&text) {
            Some(true) => Err(cluster::seeds::single_node_is_a_cluster(
                &self.primary()?.apply_conns().target().address(),
            )),
            _ => Ok(()),
        }
    }

    async fn load_scripts(&self) -> Result<(), SinkError> {
        for script in [&*CLAIM_SCRIPT] {
            let mut load = redis::cmd("SCRIPT");
            load.arg("LOAD").arg(script.source);
            self.query(b"", &load, "SCRIPT LOAD").await?;
        }
        Ok(())
    }

    /// Runs `cmd`, whose keys live where `key` does (`topology.rs`).
    async fn query(&self, key: &[u8], cmd: &Cmd, what: &str) -> Result<Value, SinkError> {
        self.topology.query(key, cmd, what, self.timeout).await
    }

    /// `EVALSHA`, loading the script once if the server lost it (restart, `SCRIPT FLUSH`,
    /// a failover to a server that never saw it).
    async fn eval(&self, script: &LuaScript, cmd: &Cmd, what: &str) -> Result<Value, SinkError> {
        let result = self.eval_once(script, cmd, what).await;
        if let Err(err) = &result {
            self.topology.after_error(err).await;
        }
        result
    }

    async fn eval_once(
        &self,
        script: &LuaScript,
        cmd: &Cmd,
        what: &str,
    ) -> Result<Value, SinkError> {
        let mut conn = self.primary()?.conn();
        let first = tokio::time::timeout(self.timeout, cmd.query_async::<Value>(&mut conn)).await;
        match first {
            Err(_) => Err(SinkError::timeout(what, self.timeout)),
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err))
                if err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                tracing::debug!("script not cached on the server; loading it");
                let mut load = redis::cmd("SCRIPT");
                load.arg("LOAD").arg(script.source);
                self.query(b"", &load, "SCRIPT LOAD").await?;
                self.query(b"", cmd, what).await
            }
            Ok(Err(err)) => Err(err.into()),
        }
    }

    /// [`RedisSink::claim_from`] for generation 0, starting a fence that has none at offset 0
    /// (tests and tools).
    pub async fn claim(&self, partition: i32) -> Result<Fence, SinkError> {
        Ok(self.claim_from(partition, 0, Some(0)).await?.fence)
    }

    /// Atomically raises the partition's fence epoch to `max(stored + 1, epoch_floor(generation))`
    /// and returns the new fence: this owner's epoch and where to resume. A fence without
    /// `next_offset` gets `resume_if_missing`. Every older owner is refused from then on.
    pub async fn claim_from(
        &self,
        partition: i32,
        generation: u64,
        resume_if_missing: Option<i64>,
    ) -> Result<Claim, SinkError> {
        if let Some(cluster) = &self.cluster {
            return cluster
                .claim_from(partition, generation, resume_if_missing)
                .await;
        }
        let floor = epoch_floor(generation);
        let reply = self
            .run_claim(partition, floor, resume_if_missing, "claim")
            .await?;
        let ClaimReply::Claimed {
            epoch,
            next_offset,
            was_missing,
            series,
        } = reply
        else {
            return Err(SinkError::Script(format!("claim refused: {reply:?}")));
        };
        tracing::info!(
            job = self.layout.job(),
            topic = self.layout.topic(),
            partition,
            epoch,
            next_offset,
            was_missing,
            max_event_ms = series.clock,
            "claimed partition fence"
        );
        Ok(Claim {
            fence: Fence {
                epoch,
                next_offset,
                max_event_ms: series.clock,
                learned_ms: series.learned,
            },
            was_missing,
        })
    }

    /// Rewrites a vanished fence for its current owner: keeps `epoch` (refused with
    /// [`SinkError::Fenced`] if a newer one is stored) and writes `resume_if_missing` as
    /// `next_offset` if the fence has none. Returns the fence after it.
    pub async fn restore_fence(
        &self,
        partition: i32,
        epoch: u64,
        resume_if_missing: i64,
    ) -> Result<Fence, SinkError> {
        if let Some(cluster) = &self.cluster {
            return cluster
                .restore_fence(partition, epoch, resume_if_missing)
                .await;
        }
        match self
            .run_claim(partition, epoch, Some(resume_if_missing), "restore")
            .await?
        {
            ClaimReply::Claimed {
                epoch,
                next_offset,
                series,
                ..
            } => Ok(Fence {
                epoch,
                next_offset,
                max_event_ms: series.clock,
                learned_ms: series.learned,
            }),
            ClaimReply::Fenced { stored_epoch } => Err(SinkError::Fenced {
                partition,
                stored_epoch,
                our_epoch: epoch,
            }),
        }
    }

    async fn run_claim(
        &self,
        partition: i32,
        floor: u64,
        resume_if_missing: Option<i64>,
        mode: &str,
    ) -> Result<ClaimReply, SinkError> {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(CLAIM_SCRIPT.hash())
            .arg(1)
            .arg(self.layout.fence_key(partition))
            .arg(floor)
            .arg(resume_if_missing.map(|o| o.to_string()).unwrap_or_default())
            .arg(mode);
        let reply = self.eval(&CLAIM_SCRIPT, &cmd, "claim").await?;
        parse_claim_reply(&reply)
    }

    /// The partition's fence, or `None` if it was never claimed.
    pub async fn read_fence(&self, partition: i32) -> Result<Option<Fence>, SinkError> {
        if let Some(cluster) = &self.cluster {
            return cluster.read_fence(partition).await;
        }
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.layout.fence_key(partition))
            .arg("epoch")
            .arg("next_offset")
            .arg(window::CLOCK_FIELD)
            .arg(window::LEARNED_FIELD);
        let reply = self.query(b"", &cmd, "read fence").await?;
        let Value::Array(items) = &reply else {
            return Err(SinkError::Script(format!(
                "unexpected HMGET reply {reply:?}"
            )));
        };
        let field = |i: usize| items.get(i).and_then(script::int_of);
        Ok(field(0).map(|epoch| Fence {
            epoch: epoch.max(0) as u64,
            next_offset: field(1),
            max_event_ms: field(2),
            learned_ms: field(3),
        }))
    }

    /// Applies one batch atomically with its fence check. Safe to call again with the same batch
    /// after a retryable error.
    pub async fn apply(&self, batch: &Batch) -> Result<ApplyOutcome, SinkError> {
        let Some(writes) = batch.writes.as_ref() else {
            return Ok(ApplyOutcome::Applied {
                events: 0,
                commands: 0,
                write_errors: 0,
            });
        };
        // Info level so that the warnings inside (write errors, fenced) carry job and partition.
        let span = tracing::info_span!(
            "redis_apply",
            job = self.layout.job(),
            topic = self.layout.topic(),
            partition = batch.partition,
            epoch = batch.epoch,
            first_offset = batch.first_offset,
            next_offset = batch.next_offset,
            events = batch.events,
        );
        let primary = match (&self.topology, &self.cluster) {
            (_, Some(cluster)) => {
                return self.apply_on_cluster(cluster, batch).instrument(span).await
            }
            (Topology::Single(primary), None) => primary,
            (Topology::Cluster(_), None) => self.primary()?,
        };
        async {
            let fence_key = self.layout.fence_key(batch.partition);
            let applied = apply::apply(
                primary.apply_conns(),
                &fence_key,
                batch,
                writes,
                self.timeout,
            )
            .await;
            match applied {
                Ok((reply, day_end)) => self.outcome(batch, reply, day_end),
                Err(err) => {
                    if matches!(err, SinkError::Unavailable(_)) {
                        // Whatever comes back may be another Redis (a promoted replica, an older
                        // snapshot) that lacks lists this process trusts to expire tonight.
                        self.forget_checked_expiries();
                    }
                    primary.after_error(&err).await;
                    Err(err)
                }
            }
        }
        .instrument(span)
        .await
    }

    /// [`RedisSink::apply`] on a cluster (`cluster/sink.rs`); the user lists it set to expire
    /// tonight are remembered as on a single node.
    async fn apply_on_cluster(
        &self,
        cluster: &cluster::sink::ClusterSink,
        batch: &Batch,
    ) -> Result<ApplyOutcome, SinkError> {
        let outcome = cluster.apply(batch).await;
        match &outcome {
            Ok(ApplyOutcome::Applied { .. }) => self
                .checked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert_all(
                    batch.user_expire_at,
                    &batch.user_lists[..batch.untrusted_user_lists],
                ),
            Ok(ApplyOutcome::AlreadyApplied) => {}
            Err(SinkError::Unavailable(_) | SinkError::Gap { .. }) => {
                self.forget_checked_expiries()
            }
            Err(_) => {}
        }
        outcome
    }

    fn forget_checked_expiries(&self) {
        self.checked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .forget_all();
    }

    fn outcome(
        &self,
        batch: &Batch,
        reply: ApplyReply,
        day_end: i64,
    ) -> Result<ApplyOutcome, SinkError> {
        match reply {
            ApplyReply::Applied {
                commands,
                write_errors,
                first_write_error,
            } => {
                if write_errors > 0 {
                    tracing::warn!(
                        write_errors,
                        first_error = first_write_error.as_deref().unwrap_or(""),
                        "redis refused some writes of the batch (skipped, as upstream would)"
                    );
                }
                tracing::debug!(commands, "applied");
                // The known lists are remembered already, unless the batch got another midnight.
                let learned = match day_end == batch.user_expire_at {
                    true => &batch.user_lists[..batch.untrusted_user_lists],
                    false => &batch.user_lists[..],
                };
                self.checked
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert_all(day_end, learned);
                Ok(ApplyOutcome::Applied {
                    events: batch.events,
                    commands,
                    write_errors,
                })
            }
            ApplyReply::AlreadyApplied { stored_next_offset } => {
                tracing::info!(stored_next_offset, "batch already applied; skipped");
                Ok(ApplyOutcome::AlreadyApplied)
            }
            ApplyReply::Fenced { stored_epoch } => {
                tracing::warn!(stored_epoch, "fenced: a newer owner holds the partition");
                Err(SinkError::Fenced {
                    partition: batch.partition,
                    stored_epoch,
                    our_epoch: batch.epoch,
                })
            }
            ApplyReply::Gap {
                stored_next_offset,
                marks,
            } => {
                // Redis lost acknowledged writes: user lists included.
                self.forget_checked_expiries();
                // Logged loudly by the partition's rewind, which knows the whole story.
                tracing::debug!(?stored_next_offset, "batch starts after the fence; refused");
                Err(SinkError::Gap {
                    partition: batch.partition,
                    stored_next_offset,
                    first_offset: batch.first_offset,
                    next_offset: batch.next_offset,
                    marks,
                })
            }
            ApplyReply::Overlap { stored_next_offset } => {
                tracing::warn!(
                    stored_next_offset,
                    "batch overlaps the applied range; refused"
                );
                Err(SinkError::Overlap {
                    partition: batch.partition,
                    stored_next_offset,
                    first_offset: batch.first_offset,
                    next_offset: batch.next_offset,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + 'static>() {}

    #[test]
    fn sink_handles_and_batches_can_cross_tasks() {
        assert_send_sync::<RedisSink>();
        assert_send_sync::<Batch>();
        assert_send_sync::<BatchBuilder>();
        assert_send_sync::<SinkError>();
    }
}
