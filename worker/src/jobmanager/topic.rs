//! How the jobmanager learns the topic's partition count.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::config::KafkaSourceConfig;

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

/// Asks the brokers for the topic's metadata.
#[derive(Debug, Clone)]
pub struct KafkaPartitions {
    client: ClientConfig,
    topic: String,
}

impl KafkaPartitions {
    pub fn new(kafka: &KafkaSourceConfig) -> Self {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &kafka.brokers)
            .set("security.protocol", &kafka.security_protocol)
            .set("group.id", format!("{}-jobmanager", kafka.group))
            .set("enable.auto.commit", "false")
            .set("allow.auto.create.topics", "false");
        if let Some(sasl) = &kafka.sasl {
            client.set("sasl.mechanism", &sasl.mechanism);
            if let Some(username) = &sasl.username {
                client.set("sasl.username", username);
            }
            if let Some(password) = &sasl.password {
                client.set("sasl.password", password);
            }
        }
        for (key, value) in &kafka.properties {
            client.set(key, value);
        }
        Self {
            client,
            topic: kafka.topic.clone(),
        }
    }
}

impl PartitionDiscovery for KafkaPartitions {
    fn partition_count(&self) -> CountFuture {
        let client = self.client.clone();
        let topic = self.topic.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let consumer: BaseConsumer = client
                    .create()
                    .map_err(|e| format!("cannot create a Kafka client: {e}"))?;
                let metadata = consumer
                    .fetch_metadata(Some(&topic), Duration::from_secs(5))
                    .map_err(|e| format!("cannot fetch metadata of topic {topic:?}: {e}"))?;
                let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
                    return Err(format!("topic {topic:?} not found"));
                };
                if let Some(err) = t.error() {
                    return Err(format!("topic {topic:?}: {err:?}"));
                }
                match t.partitions().len() {
                    0 => Err(format!("topic {topic:?} has no partitions")),
                    n => Ok(n as u32),
                }
            })
            .await
            .map_err(|e| format!("metadata task failed: {e}"))?
        })
    }
}
