//! The exactly-once Redis sink.
//!
//! Every partition has a fence hash `{prefix}streamjob:{job}:fence:{topic}:{partition}` →
//! `{epoch, next_offset}`. An owner [`RedisSink::claim`]s the partition (bumping the epoch, which
//! shuts out every older owner) and resumes at the fence's `next_offset`. Each [`Batch`] is applied
//! by one Lua script that, atomically: refuses it if the stored epoch is newer ([`SinkError::Fenced`]),
//! skips it if `next_offset` is already past it ([`ApplyOutcome::AlreadyApplied`]), refuses it if
//! the fence lies strictly inside it ([`SinkError::Overlap`], never a partial re-apply), and
//! otherwise runs all its merged writes and moves `next_offset` to the batch's end.
//!
//! The sink holds one multiplexed connection (redis-rs `ConnectionManager`, which reconnects
//! in the background after the server goes away); every call has a timeout, so a hung Redis
//! becomes a retryable [`SinkError::Unavailable`].

mod batch;
mod checked_expiries;
mod error;
mod layout;
mod script;
mod series;
pub mod window;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, IntoConnectionInfo, Value};
use tracing::Instrument;

pub use batch::{Batch, BatchBuilder};
use checked_expiries::CheckedExpiries;
pub use error::SinkError;
pub use layout::{system_time_ms, Layout, MESSAGE_KEY_PREFIX, MESSAGE_TTL, TEMPLATE_TTL};

use crate::config::RedisSinkConfig;
use script::{
    parse_apply_reply, parse_claim_reply, ApplyReply, LuaScript, APPLY_SCRIPT, CLAIM_SCRIPT,
};

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
    /// The job watermark recorded in Redis as final when the partition was claimed (see
    /// [`RedisSink::record_final_watermark`]); `None` from [`RedisSink::read_fence`].
    pub final_watermark_ms: Option<i64>,
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
    /// When a batch pushes to a user list that already existed, read its expiry (`PEXPIRETIME`)
    /// and correct it if it is not tonight's midnight. Lists this sink creates always carry the
    /// right expiry and yesterday's have expired, so only lists written by someone else can
    /// differ — upstream's 52-year-TTL keys while migrating from austin's Flink job. Each list
    /// is checked once a day per process (`checked_expiries.rs`): later batches of the day skip
    /// it. Turning the check off saves that first-touch command on a Redis no other writer ever
    /// touched. Default: on.
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
    conn: ConnectionManager,
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
        let mut info = cfg
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| SinkError::Config(format!("sink.redis.url: {e}")))?;
        if let Some(password) = cfg.password.as_deref().filter(|p| !p.is_empty()) {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        let client = redis::Client::open(info)
            .map_err(|e| SinkError::Config(format!("sink.redis.url: {e}")))?;
        let timeout = options.call_timeout;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(3)
            .set_max_delay(Duration::from_secs(1));
        let conn = tokio::time::timeout(
            timeout,
            ConnectionManager::new_with_config(client, manager_config),
        )
        .await
        .map_err(|_| SinkError::timeout("connecting to redis", timeout))??;
        let sink = Self {
            conn,
            layout,
            timeout,
            checked: Arc::default(),
        };
        sink.load_scripts().await?;
        Ok(sink)
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// A builder for one batch of `partition`, owned at `epoch`.
    pub fn batch_builder(&self, partition: i32, epoch: u64) -> BatchBuilder {
        BatchBuilder::new(partition, epoch, &self.layout, Arc::clone(&self.checked))
    }

    async fn load_scripts(&self) -> Result<(), SinkError> {
        for script in [&*APPLY_SCRIPT, &*CLAIM_SCRIPT] {
            let mut load = redis::cmd("SCRIPT");
            load.arg("LOAD").arg(script.source);
            self.query(&load, "SCRIPT LOAD").await?;
        }
        Ok(())
    }

    async fn query(&self, cmd: &Cmd, what: &str) -> Result<Value, SinkError> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, cmd.query_async::<Value>(&mut conn)).await {
            Err(_) => Err(SinkError::timeout(what, self.timeout)),
            Ok(result) => Ok(result?),
        }
    }

    /// `EVALSHA`, loading the script once if the server lost it (restart, `SCRIPT FLUSH`).
    async fn eval(&self, script: &LuaScript, cmd: &Cmd, what: &str) -> Result<Value, SinkError> {
        let mut conn = self.conn.clone();
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
                self.query(&load, "SCRIPT LOAD").await?;
                self.query(cmd, what).await
            }
            Ok(Err(err)) => Err(err.into()),
        }
    }

    /// Atomically bumps the partition's fence epoch and returns the new fence: this owner's epoch
    /// and where to resume. Every older owner is refused from then on.
    pub async fn claim(&self, partition: i32) -> Result<Fence, SinkError> {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(CLAIM_SCRIPT.hash())
            .arg(2)
            .arg(self.layout.fence_key(partition))
            .arg(self.layout.series_final_key());
        let reply = self.eval(&CLAIM_SCRIPT, &cmd, "claim").await?;
        let (epoch, next_offset, max_event_ms, final_watermark_ms) = parse_claim_reply(&reply)?;
        tracing::info!(
            job = self.layout.job(),
            topic = self.layout.topic(),
            partition,
            epoch,
            next_offset,
            max_event_ms,
            "claimed partition fence"
        );
        Ok(Fence {
            epoch,
            next_offset,
            max_event_ms,
            final_watermark_ms,
        })
    }

    /// The partition's fence, or `None` if it was never claimed.
    pub async fn read_fence(&self, partition: i32) -> Result<Option<Fence>, SinkError> {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.layout.fence_key(partition))
            .arg("epoch")
            .arg("next_offset")
            .arg(window::CLOCK_FIELD);
        let reply = self.query(&cmd, "read fence").await?;
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
            final_watermark_ms: None,
        }))
    }

    /// Applies one batch atomically with its fence check. Safe to call again with the same batch
    /// after a retryable error.
    pub async fn apply(&self, batch: &Batch) -> Result<ApplyOutcome, SinkError> {
        let Some(cmd) = batch.cmd.as_ref() else {
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
        async {
            let reply = self.eval(&APPLY_SCRIPT, cmd, "apply batch").await?;
            match parse_apply_reply(&reply)? {
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
                    self.checked
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert_all(batch.user_expire_at, &batch.user_lists);
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
                ApplyReply::Overlap { stored_next_offset } => {
                    tracing::error!(
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
        .instrument(span)
        .await
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
