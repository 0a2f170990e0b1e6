//! The dead-letter producer. A record that cannot be decoded goes to the DLQ topic with its
//! original bytes, and the batch that skips its offset is applied only after the broker
//! acknowledged the DLQ record: a crash in between replays the record, which is dead-lettered again
//! with the same key `"{partition}:{offset}"`, so consumers of the DLQ can drop the duplicate.

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::{producer_config, KafkaContext};
use crate::config::KafkaSourceConfig;
use crate::metrics::Metrics;

/// One record to dead-letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    /// The record's original value (empty when it had none).
    pub payload: Vec<u8>,
    /// Human-readable reason (the `reason` header).
    pub reason: String,
    /// Low-cardinality reason label (metrics).
    pub kind: &'static str,
}

impl DeadLetter {
    /// The DLQ record key: identifies the source record, so a replayed duplicate is recognisable.
    pub fn key(&self) -> String {
        format!("{}:{}", self.partition, self.offset)
    }
}

/// Producer of the dead-letter topic.
#[derive(Clone)]
pub struct DlqProducer {
    producer: FutureProducer<KafkaContext>,
    topic: String,
    source_topic: String,
}

impl DlqProducer {
    pub fn create(kafka: &KafkaSourceConfig, metrics: &Metrics) -> Result<Self, KafkaError> {
        let producer = producer_config(kafka)
            .set_log_level(rdkafka::config::RDKafkaLogLevel::Warning)
            .create_with_context(KafkaContext::new(metrics.clone(), "dlq-producer"))?;
        Ok(Self {
            producer,
            topic: kafka.dlq_topic(),
            source_topic: kafka.topic.clone(),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Sends every record and waits until the broker acknowledged all of them. Returns the records
    /// that failed (to retry later), with the last error.
    pub async fn deliver_all(
        &self,
        records: &[DeadLetter],
    ) -> Result<(), (Vec<usize>, KafkaError)> {
        let futures = records.iter().map(|record| {
            let key = record.key();
            let offset = record.offset.to_string();
            let source_partition = record.partition.to_string();
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "reason",
                    value: Some(record.reason.as_bytes()),
                })
                .insert(Header {
                    key: "source.topic",
                    value: Some(self.source_topic.as_bytes()),
                })
                .insert(Header {
                    key: "source.partition",
                    value: Some(source_partition.as_bytes()),
                })
                .insert(Header {
                    key: "source.offset",
                    value: Some(offset.as_bytes()),
                });
            let producer = self.producer.clone();
            let topic = self.topic.clone();
            async move {
                let record = FutureRecord::to(&topic)
                    .key(&key)
                    .payload(&record.payload)
                    .headers(headers);
                producer
                    .send(record, Duration::from_secs(5))
                    .await
                    .map(|_| ())
                    .map_err(|(err, _)| err)
            }
        });
        let results = futures::future::join_all(futures).await;
        let mut failed = Vec::new();
        let mut last_err = None;
        for (i, result) in results.into_iter().enumerate() {
            if let Err(err) = result {
                failed.push(i);
                last_err = Some(err);
            }
        }
        match last_err {
            None => Ok(()),
            Some(err) => Err((failed, err)),
        }
    }
}
