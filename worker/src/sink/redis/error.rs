//! Sink errors, classified by what the caller must do about them.

use redis::{ErrorKind, RedisError, ServerErrorKind};

#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    /// A newer owner claimed the partition: stop consuming it and never retry this batch.
    #[error("partition {partition} is fenced: Redis holds epoch {stored_epoch}, this owner has epoch {our_epoch}")]
    Fenced {
        partition: i32,
        stored_epoch: u64,
        our_epoch: u64,
    },
    /// The fence lies strictly inside the batch: part of it was applied by an earlier batch whose
    /// boundaries differ. The script refuses it (never applies twice, never skips events); the
    /// owner must re-read the fence and resume from `stored_next_offset`. Cannot happen while each
    /// owner builds contiguous batches from where the fence told it to start.
    #[error("batch [{first_offset}, {next_offset}) of partition {partition} overlaps the applied range ending at {stored_next_offset}")]
    Overlap {
        partition: i32,
        stored_next_offset: i64,
        first_offset: i64,
        next_offset: i64,
    },
    /// Redis holds less than the caller applied: the fence ends before the batch's first offset,
    /// or (`stored_next_offset: None`) it has no `next_offset`, which every claim writes, so Redis
    /// lost the fence itself. Redis lost acknowledged writes (failover to a lagging replica,
    /// restart from an older snapshot). Nothing was written; the owner must rewind its consumer to
    /// the fence and re-apply from there.
    /// `marks`: what the fence stores of the event-time series (its clock and the job watermark
    /// its last batch decided with), read with the decision.
    #[error("redis lost acknowledged writes of partition {partition}: its fence ends at {stored_next_offset:?}, before the batch [{first_offset}, {next_offset})")]
    Gap {
        partition: i32,
        stored_next_offset: Option<i64>,
        first_offset: i64,
        next_offset: i64,
        marks: super::window::SeriesMarks,
    },
    /// Connection refused/dropped, timeouts, `LOADING`, `OOM`, `READONLY`, `BUSY`, …: retry the
    /// same batch later (the fence makes a retry of an already-applied batch a no-op).
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    /// The script failed or Redis answered something unexpected: a bug, not retryable.
    #[error("redis script error: {0}")]
    Script(String),
    /// Bad URL, password, ACL or time zone: not retryable.
    #[error("redis sink misconfigured: {0}")]
    Config(String),
}

impl SinkError {
    /// Whether retrying the same call later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SinkError::Unavailable(_))
    }

    /// Short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkError::Fenced { .. } => "fenced",
            SinkError::Overlap { .. } => "overlap",
            SinkError::Gap { .. } => "gap",
            SinkError::Unavailable(_) => "unavailable",
            SinkError::Script(_) => "script",
            SinkError::Config(_) => "config",
        }
    }

    /// An error reply (`CODE message`, as Redis sent it), classified like the redis crate's
    /// server errors, so both apply and claim paths retry the same codes.
    pub(crate) fn from_server_reply(line: &str) -> Self {
        let wire = format!("-{}\r\n", line.replace(['\r', '\n'], " "));
        match redis::parse_redis_value(wire.as_bytes()) {
            Ok(redis::Value::ServerError(err)) => RedisError::from(err).into(),
            _ => SinkError::Script(line.to_string()),
        }
    }

    pub(crate) fn timeout(what: &str, after: std::time::Duration) -> Self {
        SinkError::Unavailable(format!("{what} timed out after {after:?}"))
    }
}

/// Server error codes that mean "not now" rather than "never".
const TRANSIENT_CODES: &[&str] = &[
    "OOM",
    "BUSY",
    "MISCONF",
    "NOREPLICAS",
    "LOADING",
    "TRYAGAIN",
    "MASTERDOWN",
    "CLUSTERDOWN",
    "READONLY",
];
const AUTH_CODES: &[&str] = &["NOAUTH", "WRONGPASS", "NOPERM"];

impl From<RedisError> for SinkError {
    fn from(err: RedisError) -> Self {
        let message = err.to_string();
        if err.is_io_error()
            || err.is_timeout()
            || err.is_connection_dropped()
            || err.is_connection_refusal()
        {
            return SinkError::Unavailable(message);
        }
        match err.kind() {
            ErrorKind::AuthenticationFailed | ErrorKind::InvalidClientConfig => {
                SinkError::Config(message)
            }
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::ReadOnly,
            ) => SinkError::Unavailable(message),
            ErrorKind::Server(ServerErrorKind::NoPerm) => SinkError::Config(message),
            ErrorKind::Io | ErrorKind::Parse => SinkError::Unavailable(message),
            _ => match err.code() {
                Some(code) if TRANSIENT_CODES.contains(&code) => SinkError::Unavailable(message),
                Some(code) if AUTH_CODES.contains(&code) => SinkError::Config(message),
                _ => SinkError::Script(message),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_and_loading_errors_are_retryable_and_others_are_not() {
        let io: SinkError = RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        ))
        .into();
        assert!(io.is_retryable(), "{io}");
        let loading: SinkError =
            RedisError::from((ErrorKind::Server(ServerErrorKind::BusyLoading), "loading")).into();
        assert!(loading.is_retryable(), "{loading}");
        let readonly: SinkError =
            RedisError::from((ErrorKind::Server(ServerErrorKind::ReadOnly), "replica")).into();
        assert!(readonly.is_retryable());
        let auth: SinkError = RedisError::from((ErrorKind::AuthenticationFailed, "bad")).into();
        assert!(matches!(auth, SinkError::Config(_)), "{auth}");
        let script: SinkError = RedisError::from((
            ErrorKind::Server(ServerErrorKind::ResponseError),
            "ERR boom",
        ))
        .into();
        assert!(matches!(script, SinkError::Script(_)), "{script}");
        // The apply path's replies, read by hand, are classified the same way.
        for (line, retryable) in [
            (
                "READONLY You can't write against a read only replica.",
                true,
            ),
            (
                "OOM command not allowed when used memory > 'maxmemory'.",
                true,
            ),
            ("LOADING Redis is loading the dataset in memory", true),
            ("ERR unknown command", false),
        ] {
            assert_eq!(
                SinkError::from_server_reply(line).is_retryable(),
                retryable,
                "{line}"
            );
        }
        assert!(matches!(
            SinkError::from_server_reply("NOPERM this user has no permissions"),
            SinkError::Config(_)
        ));
        assert!(!script.is_retryable());
        let fenced = SinkError::Fenced {
            partition: 1,
            stored_epoch: 3,
            our_epoch: 2,
        };
        assert!(!fenced.is_retryable());
        assert_eq!(fenced.kind(), "fenced");
    }
}
