//! streamjob-worker: the runtime of the austin message-trace pipeline.
//!
//! Light surface (always built, used by the operator): [`config`] and [`api`].
//! Engine (feature `engine`, default): Kafka source, AnchorInfo decoding, the exactly-once Redis sink,
//! and the jobmanager/taskmanager/standalone runtimes.

pub mod api;
pub mod config;
#[cfg(feature = "engine")]
pub mod demo;
#[cfg(feature = "engine")]
pub mod embedded_kafka;
#[cfg(feature = "engine")]
pub mod http;
#[cfg(feature = "engine")]
pub mod jobmanager;
#[cfg(feature = "engine")]
pub mod metrics;
#[cfg(feature = "engine")]
pub mod pipeline;
#[cfg(feature = "engine")]
pub mod sink;
#[cfg(feature = "engine")]
pub mod source;
#[cfg(feature = "engine")]
pub mod standalone;
#[cfg(feature = "engine")]
pub mod taskmanager;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
#[cfg(feature = "engine")]
pub mod transform;
