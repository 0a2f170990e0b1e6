//! Test helpers shared by this crate's tests, other crates' tests and benchmarks
//! (feature `testkit`). Real processes, not mocks.

#[cfg(feature = "engine")]
pub mod clock;
#[cfg(feature = "engine")]
pub mod delivery;
#[cfg(feature = "engine")]
pub mod kafka;
#[cfg(feature = "engine")]
pub mod lifecycle;
pub mod redis;
pub mod redis_cluster;
pub mod tls;
#[cfg(feature = "engine")]
pub mod trace_state;
#[cfg(feature = "engine")]
pub mod upstream;

/// Assigns `partitions` to `pipeline` as a jobmanager's first assignment does (generation 1,
/// each from its fence).
pub async fn assign_all(
    pipeline: &crate::pipeline::Pipeline,
    partitions: impl IntoIterator<Item = i32>,
) {
    for partition in partitions {
        pipeline
            .assign(crate::api::Assignment {
                partition,
                generation: 1,
                start_offset: None,
            })
            .await
            .expect("assigned");
    }
}
