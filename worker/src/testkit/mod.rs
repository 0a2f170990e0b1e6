//! Test helpers shared by this crate's tests, other crates' tests and benchmarks
//! (feature `testkit`). Real processes, not mocks.

pub mod redis;
#[cfg(feature = "engine")]
pub mod upstream;
#[cfg(feature = "engine")]
pub mod kafka;
#[cfg(feature = "engine")]
pub mod trace_state;
