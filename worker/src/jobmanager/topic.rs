//! How the jobmanager learns the topic's partition count.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use rdkafka::consumer::BaseConsumer;

use crate::config::KafkaSourceConfig;
use crate::source::{consumer_config, topic_partitions};

pub type CountFuture = Pin<Box<dyn Future<Output = Result<u32, String>> + Send>>;

/// Source of the topic's partition count (the broker in production, a constant in tests).
pub trait PartitionDiscovery: Send + Sync + 'static {
    fn partition_count(&self) -> CountFuture;
}

/// A fixed partition count, for tests and tools that know it.
#[derive(Debug, Clone, Copy)]
pub struct FixedPartitions(pub u32);

impl PartitionDiscovery for FixedPartitions {
    fn partition_count(&self) -> CountFuture {
        let count = self.0;
        Box::pin(async move { Ok(count) })
    }
}

/// A count the caller read already (standalone mode reads it before starting its jobmanager),
/// then the brokers: saves one metadata round trip (a new client) before the first assignment.
#[derive(Debug)]
pub struct KnownPartitions {
    known: std::sync::Mutex<Option<u32>>,
    brokers: KafkaPartitions,
}

impl KnownPartitions {
    pub fn new(count: u32, kafka: &KafkaSourceConfig) -> Self {
        Self {
            known: std::sync::Mutex::new(Some(count)),
            brokers: KafkaPartitions::new(kafka),
        }
    }
}

impl PartitionDiscovery for KnownPartitions {
    fn partition_count(&self) -> CountFuture {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner()).take();
        match known {
            Some(count) => Box::pin(async move { Ok(count) }),
            None => self.brokers.partition_count(),
        }
    }
}

/// Asks the brokers for the topic's metadata.
#[derive(Debug, Clone)]
pub struct KafkaPartitions {
    kafka: KafkaSourceConfig,
}

impl KafkaPartitions {
    pub fn new(kafka: &KafkaSourceConfig) -> Self {
        Self {
            kafka: kafka.clone(),
        }
    }
}

impl PartitionDiscovery for KafkaPartitions {
    fn partition_count(&self) -> CountFuture {
        let kafka = self.kafka.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let topic = &kafka.topic;
                let consumer: BaseConsumer = consumer_config(&kafka)
                    .create()
                    .map_err(|e| format!("cannot create a Kafka client: {e}"))?;
                let partitions = topic_partitions(&consumer, topic, Duration::from_secs(5))
                    .map_err(|e| format!("cannot fetch metadata of topic {topic:?}: {e}"))?;
                match partitions.len() {
                    0 => Err(format!("topic {topic:?} not found or has no partitions")),
                    n => Ok(n as u32),
                }
            })
            .await
            .map_err(|e| format!("metadata task failed: {e}"))?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_known_count_is_answered_once_then_the_brokers_are_asked() {
        // Nothing listens here: the second answer must come from (failing to reach) the brokers.
        let kafka = KafkaSourceConfig {
            brokers: "127.0.0.1:1".into(),
            ..KafkaSourceConfig::default()
        };
        let discovery = KnownPartitions::new(6, &kafka);
        assert_eq!(discovery.partition_count().await, Ok(6));
        assert!(discovery.partition_count().await.is_err());
    }
}
