//! The Kafka side: a consumer on explicitly assigned partitions (never group rebalance; the
//! jobmanager decides who owns what) and the dead-letter producer.
//!
//! librdkafka retries broker errors itself; this module surfaces them in logs and metrics
//! (through [`KafkaContext`]) and never moves a position on its own: where a partition resumes is
//! decided by the Redis fence.

mod dlq;

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

pub use dlq::{DeadLetter, DlqProducer};

use crate::config::KafkaSourceConfig;
use crate::metrics::Metrics;

/// Client context shared by the consumer and the DLQ producer: librdkafka's logs go to `tracing`,
/// its errors to logs and `streamjob_kafka_errors_total`.
#[derive(Clone)]
pub struct KafkaContext {
    metrics: Metrics,
    role: &'static str,
}

impl KafkaContext {
    pub fn new(metrics: Metrics, role: &'static str) -> Self {
        Self { metrics, role }
    }
}

impl ClientContext for KafkaContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(
                    client = self.role,
                    facility = fac,
                    "librdkafka: {log_message}"
                )
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(
                    client = self.role,
                    facility = fac,
                    "librdkafka: {log_message}"
                )
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(
                    client = self.role,
                    facility = fac,
                    "librdkafka: {log_message}"
                )
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(
                    client = self.role,
                    facility = fac,
                    "librdkafka: {log_message}"
                )
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        let kind = code
            .map(|code| format!("{code:?}"))
            .unwrap_or_else(|| "client".into());
        match security_hint(code, reason) {
            Some(hint) => tracing::error!(
                client = self.role,
                %error,
                "kafka connection refused: {hint} (librdkafka retries): {reason}"
            ),
            None => tracing::warn!(
                client = self.role,
                %error,
                "kafka error (librdkafka retries): {reason}"
            ),
        }
        self.metrics.pipeline().kafka_error(&kind);
    }
}

impl ConsumerContext for KafkaContext {}

/// What to fix when librdkafka reports a TLS or SASL failure, naming the job.yaml field (and the
/// StreamJob field it is rendered from).
pub fn security_hint(code: Option<RDKafkaErrorCode>, reason: &str) -> Option<&'static str> {
    let lower = reason.to_ascii_lowercase();
    let sasl = matches!(
        code,
        Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed)
    ) || lower.contains("sasl");
    if sasl {
        return Some(
            "SASL authentication failed: check `source.kafka.sasl.mechanism` and the credentials \
             in STREAMJOB_KAFKA_SASL_USERNAME and STREAMJOB_KAFKA_SASL_PASSWORD (spec.kafka.sasl.*SecretRef)",
        );
    }
    if lower.contains("certificate verify failed") || lower.contains("unable to get local issuer") {
        return Some(
            "the broker's TLS certificate is not signed by the CA in `ssl.ca.location` \
             (spec.kafka.tls.caSecretRef)",
        );
    }
    if lower.contains("certificate has expired") || lower.contains("certificate expired") {
        return Some("the broker's TLS certificate has expired");
    }
    if code == Some(RDKafkaErrorCode::SSL) || lower.contains("ssl handshake failed") {
        return Some(
            "TLS handshake failed: check `source.kafka.securityProtocol` and the `ssl.*` files \
             (spec.kafka.tls: a broker that requires a client certificate needs certSecretRef \
             and keySecretRef)",
        );
    }
    None
}

/// The consumer type of the pipeline.
pub type SourceConsumer = StreamConsumer<KafkaContext>;

/// librdkafka properties shared by every client of the job: brokers, security, SASL, then the
/// job's own `properties` (which win).
pub fn base_client_config(kafka: &KafkaSourceConfig) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &kafka.brokers)
        .set("security.protocol", &kafka.security_protocol);
    if let Some(sasl) = &kafka.sasl {
        if !sasl.mechanism.is_empty() {
            cfg.set("sasl.mechanism", &sasl.mechanism);
        }
        if let Some(user) = &sasl.username {
            cfg.set("sasl.username", user);
        }
        if let Some(password) = &sasl.password {
            cfg.set("sasl.password", password);
        }
    }
    cfg
}

fn apply_overrides(cfg: &mut ClientConfig, properties: &BTreeMap<String, String>) {
    for (key, value) in properties {
        cfg.set(key, value);
    }
}

/// Consumer properties. Offsets are never auto-committed or auto-stored: the Redis fence is the
/// truth, group commits are a courtesy to Kafka tooling. The prefetch queue is bounded so that a
/// paused partition (Redis down) holds little memory.
pub fn consumer_config(kafka: &KafkaSourceConfig) -> ClientConfig {
    let mut cfg = base_client_config(kafka);
    cfg.set("group.id", &kafka.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        // Only used when a resume offset is out of range (truncated by retention): take what is left.
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "100")
        // Per partition: two default batches, little enough that RSS stays small (each queued
        // record is also a ~0.5 KB librdkafka op; the queue overshoots by one fetch).
        .set("queued.min.messages", "2000")
        .set("queued.max.messages.kbytes", "512")
        // With queues this small a partition is often "full" when its fetch is due; librdkafka's
        // default would then skip it for a whole second, starving the pipeline (measured:
        // 37k instead of 55-60k events/s, see BENCHMARKS.md).
        .set("fetch.queue.backoff.ms", "10")
        .set("topic.metadata.refresh.interval.ms", "30000");
    apply_overrides(&mut cfg, &kafka.properties);
    cfg
}

/// DLQ producer properties: acks from all in-sync replicas, librdkafka's own retries; a record
/// that cannot be delivered within `message.timeout.ms` is retried by the pipeline.
pub fn producer_config(kafka: &KafkaSourceConfig) -> ClientConfig {
    let mut cfg = base_client_config(kafka);
    cfg.set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000");
    // Consumer-only properties in `properties` would make librdkafka warn; pass only the shared ones.
    for (key, value) in &kafka.properties {
        if !is_consumer_only(key) {
            cfg.set(key, value);
        }
    }
    cfg
}

fn is_consumer_only(key: &str) -> bool {
    key.starts_with("fetch.")
        || key.starts_with("queued.")
        || key.starts_with("auto.")
        || key.starts_with("enable.auto")
        || matches!(
            key,
            "group.id"
                | "session.timeout.ms"
                | "max.poll.interval.ms"
                | "isolation.level"
                | "enable.partition.eof"
                | "check.crcs"
        )
}

/// Creates the pipeline's consumer (nothing assigned yet).
pub fn create_consumer(
    kafka: &KafkaSourceConfig,
    metrics: &Metrics,
) -> Result<SourceConsumer, KafkaError> {
    consumer_config(kafka)
        .set_log_level(RDKafkaLogLevel::Warning)
        .create_with_context(KafkaContext::new(metrics.clone(), "consumer"))
}

/// Partition ids of `topic`, from broker metadata. Blocking: call from `spawn_blocking`.
pub fn topic_partitions<C: rdkafka::consumer::Consumer<X>, X: ConsumerContext>(
    consumer: &C,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>, KafkaError> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let mut partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    partitions.sort_unstable();
    Ok(partitions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_properties_override_defaults_and_skip_consumer_keys_for_the_producer() {
        let mut kafka = KafkaSourceConfig::default();
        kafka
            .properties
            .insert("fetch.wait.max.ms".into(), "10".into());
        kafka.properties.insert("client.id".into(), "trace".into());
        let consumer = consumer_config(&kafka);
        assert_eq!(consumer.get("fetch.wait.max.ms"), Some("10"));
        assert_eq!(consumer.get("enable.auto.commit"), Some("false"));
        assert_eq!(consumer.get("group.id"), Some("austinLogGroup"));
        let producer = producer_config(&kafka);
        assert_eq!(producer.get("fetch.wait.max.ms"), None);
        assert_eq!(producer.get("client.id"), Some("trace"));
        assert_eq!(producer.get("acks"), Some("all"));
    }
}

#[cfg(test)]
mod security_tests {
    use super::*;

    #[test]
    fn tls_and_sasl_failures_name_what_to_fix() {
        // librdkafka 2.12's own wording for a broker signed by another CA.
        let wrong_ca = "ssl://127.0.0.1:9093/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker certificate could not be verified, verify that ssl.ca.location is correctly configured or root CA certificates are installed";
        let hint = security_hint(Some(RDKafkaErrorCode::SSL), wrong_ca).expect("hint");
        assert!(
            hint.contains("ssl.ca.location") && hint.contains("not signed"),
            "{hint}"
        );
        let sasl = security_hint(
            Some(RDKafkaErrorCode::Authentication),
            "SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512",
        )
        .expect("hint");
        assert!(
            sasl.contains("source.kafka.sasl.mechanism")
                && sasl.contains("STREAMJOB_KAFKA_SASL_PASSWORD"),
            "{sasl}"
        );
        assert!(security_hint(
            Some(RDKafkaErrorCode::AllBrokersDown),
            "1/1 brokers are down"
        )
        .is_none());
    }
}
