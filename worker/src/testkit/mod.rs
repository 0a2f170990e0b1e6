//! Test helpers shared by this crate's tests, other crates' tests and benchmarks
//! (feature `testkit`). Real processes, not mocks.

#[cfg(feature = "engine")]
pub mod kafka;
#[cfg(feature = "engine")]
pub mod lifecycle;
pub mod redis;
pub mod tls;
#[cfg(feature = "engine")]
pub mod trace_state;
#[cfg(feature = "engine")]
pub mod upstream;
