//! Annotations the operator puts on its children's pod templates: which config and restart nonce
//! the pods run. Read back by the status, the lifecycle and the rollout planner, so they live
//! apart from the code that renders the children.

/// Pod template annotation carrying the config hash: a config change rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "streaming.austin.dev/config-hash";
/// Pod template annotation carrying `spec.restartNonce`: a new nonce rolls the pods.
pub const RESTART_NONCE_ANNOTATION: &str = "streaming.austin.dev/restart-nonce";
