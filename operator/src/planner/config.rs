//! Renders the worker's `job.yaml` from a StreamJob spec through the worker crate's own
//! [`JobConfig`], so what the operator writes is, by construction, what the worker reads.

use std::path::PathBuf;
use std::time::Duration;

use streamjob_worker::config::{self as worker, JobConfig};

use crate::crd::{LogFormat, StartingOffsets, StreamJob};
use crate::planner::names;
use crate::planner::PlanError;

/// Directory of the savepoint volume inside the jobmanager pod (`checkpoint.dir`).
pub const STATE_DIR: &str = "/var/lib/streamjob";
/// Mount point of the ConfigMap.
pub const CONFIG_DIR: &str = "/etc/streamjob";
/// Key of the rendered config in the ConfigMap.
pub const CONFIG_KEY: &str = "job.yaml";
/// Mount point of the Kafka TLS files (outside the read-only ConfigMap mount).
pub const TLS_DIR: &str = "/etc/streamjob-tls";
/// Mount point of the job's API token Secret in the jobmanager pod.
pub const API_TOKEN_DIR: &str = "/etc/streamjob-api";
/// Key of the token in the `<job>-api-token` Secret (and its file name in [`API_TOKEN_DIR`]).
pub const API_TOKEN_KEY: &str = "token";
/// Mount point of the Redis TLS files (a projected volume of the Secret keys in `spec.redis.tls`).
pub const REDIS_TLS_DIR: &str = "/etc/streamjob-redis-tls";
/// jobmanager REST port.
pub const REST_PORT: i32 = 8081;
/// taskmanager metrics port.
pub const METRICS_PORT: i32 = 9249;

fn duration(field: &'static str, text: &str) -> Result<Duration, PlanError> {
    humantime::parse_duration(text).map_err(|e| PlanError::InvalidSpec {
        field,
        reason: format!("{text:?} is not a duration: {e}"),
    })
}

fn count(field: &'static str, value: i64) -> Result<usize, PlanError> {
    usize::try_from(value).map_err(|_| PlanError::InvalidSpec {
        field,
        reason: format!("{value} must not be negative"),
    })
}

/// The job configuration for a StreamJob. Secrets are never rendered: they reach the processes
/// through `secretKeyRef` environment variables.
pub fn render(job: &StreamJob, name: &str, namespace: &str) -> Result<JobConfig, PlanError> {
    let spec = &job.spec;
    let mut config = JobConfig::default();
    config.job.name = name.to_string();

    let kafka = &mut config.source.kafka;
    kafka.brokers = spec.kafka.brokers.clone();
    kafka.topic = spec.kafka.topic.clone();
    kafka.group = spec.kafka.group.clone();
    kafka.starting_offsets = match spec.kafka.starting_offsets {
        StartingOffsets::Earliest => worker::StartingOffsets::Earliest,
        StartingOffsets::Latest => worker::StartingOffsets::Latest,
    };
    kafka.dlq_topic = spec.kafka.dlq_topic.clone();
    kafka.security_protocol = spec.kafka.security_protocol.as_str().to_string();
    kafka.sasl = spec.kafka.sasl.as_ref().map(|sasl| worker::SaslConfig {
        mechanism: sasl.mechanism.as_str().to_string(),
        username: None,
        password: None,
    });
    kafka.properties = spec.kafka.properties.clone();
    if let Some(tls) = &spec.kafka.tls {
        if tls.ca_secret_ref.is_some() {
            kafka
                .properties
                .insert("ssl.ca.location".into(), format!("{TLS_DIR}/ca.crt"));
        }
        if tls.cert_secret_ref.is_some() {
            kafka.properties.insert(
                "ssl.certificate.location".into(),
                format!("{TLS_DIR}/tls.crt"),
            );
        }
        if tls.key_secret_ref.is_some() {
            kafka
                .properties
                .insert("ssl.key.location".into(), format!("{TLS_DIR}/tls.key"));
        }
    }

    let redis = &mut config.sink.redis;
    redis.url = spec.redis.url.clone();
    redis.username = spec.redis.username.clone();
    redis.password = None;
    redis.tls = spec.redis.tls.as_ref().map(|tls| {
        let file = |secret: &Option<_>, name: &str| {
            secret
                .as_ref()
                .map(|_| PathBuf::from(format!("{REDIS_TLS_DIR}/{name}")))
        };
        worker::RedisTlsConfig {
            ca_file: file(&tls.ca_secret_ref, "ca.crt"),
            cert_file: file(&tls.cert_secret_ref, "tls.crt"),
            key_file: file(&tls.key_secret_ref, "tls.key"),
            server_name: tls.server_name.clone(),
        }
    });
    redis.time_zone = spec.redis.time_zone.clone();
    redis.key_prefix = spec.redis.key_prefix.clone();
    redis.sentinel = spec
        .redis
        .sentinel
        .as_ref()
        .map(|sentinel| worker::RedisSentinelConfig {
            master_name: sentinel.master_name.clone(),
            nodes: sentinel.nodes.clone(),
            password: None,
        });
    redis.cluster = spec
        .redis
        .cluster
        .as_ref()
        .map(|cluster| worker::RedisClusterConfig {
            nodes: cluster.nodes.clone(),
        });

    config.batch.max_events = count("spec.batch.maxEvents", spec.batch.max_events)?;
    config.batch.linger = duration("spec.batch.linger", &spec.batch.linger)?;
    config.batch.stop_timeout = duration("spec.batch.stopTimeout", &spec.batch.stop_timeout)?;

    config.window.enabled = spec.window.enabled;
    config.window.size = duration("spec.window.size", &spec.window.size)?;
    config.window.max_out_of_orderness = duration(
        "spec.window.maxOutOfOrderness",
        &spec.window.max_out_of_orderness,
    )?;
    config.window.allowed_lateness =
        duration("spec.window.allowedLateness", &spec.window.allowed_lateness)?;
    config.window.idle_timeout = duration("spec.window.idleTimeout", &spec.window.idle_timeout)?;

    config.checkpoint.interval = duration("spec.checkpoint.interval", &spec.checkpoint.interval)?;
    config.checkpoint.dir = PathBuf::from(STATE_DIR);
    config.checkpoint.retain = count("spec.checkpoint.retain", spec.checkpoint.retain)?;

    config.savepoint.interval = duration("spec.savepoint.interval", &spec.savepoint.interval)?;
    config.savepoint.max_count = count(
        "spec.savepoint.retention.maxCount",
        spec.savepoint.retention.max_count,
    )?;
    config.savepoint.max_age = duration(
        "spec.savepoint.retention.maxAge",
        &spec.savepoint.retention.max_age,
    )?;

    config.jobmanager.bind = format!("0.0.0.0:{REST_PORT}");
    config.jobmanager.url = format!(
        "http://{}.{namespace}.svc:{REST_PORT}",
        names::jobmanager(name)
    );
    // The mutating REST calls need the job's token, read from the mounted Secret at each call
    // (a rotated Secret applies without a restart). Taskmanagers never read it.
    config.jobmanager.api_token_file =
        Some(PathBuf::from(format!("{API_TOKEN_DIR}/{API_TOKEN_KEY}")));
    config.metrics.bind = format!("0.0.0.0:{METRICS_PORT}");
    config.logging.format = match spec.logging.format {
        LogFormat::Text => worker::LogFormat::Text,
        LogFormat::Json => worker::LogFormat::Json,
    };
    config.logging.level = spec.logging.level.clone();

    config
        .validate()
        .map_err(|e| PlanError::InvalidConfig(e.to_string()))?;
    Ok(config)
}

/// A stable 64-bit FNV-1a hash, hex encoded. Stable across Rust and operator versions (unlike
/// `DefaultHasher`), so an operator upgrade does not roll every job's pods.
pub fn stable_hash(parts: &[&[u8]]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.iter() {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separator so ("ab","c") and ("a","bc") differ.
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}
