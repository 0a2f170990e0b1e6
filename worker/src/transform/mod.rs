//! The "transform" stage: Kafka record payload → [`AnchorInfo`], or a [`DecodeError`] that sends
//! the record to the dead-letter topic.

mod anchor;
mod error;

pub use anchor::{decode, decode_with_limit, AnchorInfo, DEFAULT_MAX_PAYLOAD_BYTES};
pub use error::DecodeError;
