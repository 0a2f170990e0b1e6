//! An in-process Kafka-protocol broker: librdkafka's mock cluster, on real TCP ports.
//!
//! Used by standalone mode (`--embedded-kafka`) and by the hidden `mock-kafka` subcommand, which
//! hosts one for multi-process tests and prints its bootstrap address. The mock keeps everything
//! in memory: it is a laptop and test broker, not a production one.

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

/// Why the embedded broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedKafkaError {
    #[error("cannot start librdkafka's mock cluster: {0}")]
    Start(rdkafka::error::KafkaError),
    #[error("cannot create topic {topic}: {source}")]
    Topic {
        topic: String,
        source: rdkafka::error::KafkaError,
    },
}

/// A running mock cluster with the job's topics.
pub struct EmbeddedKafka {
    cluster: MockCluster<'static, DefaultProducerContext>,
    bootstrap: String,
}

impl std::fmt::Debug for EmbeddedKafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedKafka")
            .field("bootstrap", &self.bootstrap)
            .finish()
    }
}

impl EmbeddedKafka {
    /// Starts `brokers` mock brokers and creates each topic with `partitions` partitions.
    pub fn start(brokers: i32, topics: &[(&str, i32)]) -> Result<Self, EmbeddedKafkaError> {
        let cluster = MockCluster::new(brokers.max(1)).map_err(EmbeddedKafkaError::Start)?;
        for &(topic, partitions) in topics {
            cluster
                .create_topic(topic, partitions, 1)
                .map_err(|source| EmbeddedKafkaError::Topic {
                    topic: topic.into(),
                    source,
                })?;
        }
        let bootstrap = cluster.bootstrap_servers();
        Ok(Self { cluster, bootstrap })
    }

    /// `host:port,…` to put into `source.kafka.brokers`.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// The mock cluster itself (fault injection in tests: request errors, broker down/up).
    pub fn cluster(&self) -> &MockCluster<'static, DefaultProducerContext> {
        &self.cluster
    }
}
