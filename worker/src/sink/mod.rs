//! Sinks: where decoded events go. Only Redis, austin's trace store.

pub mod redis;
