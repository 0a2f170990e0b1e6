//! Which kind of Redis a configuration points at, checked when the sink connects: a
//! single-node URL pointed at a cluster node would meet `MOVED` for two keys in three forever,
//! and a cluster configuration pointed at a plain Redis could never find a slot map. Both are
//! refused with one message that names the field to change.

use std::time::Duration;

use redis::{ConnectionAddr, Value};

use crate::config::{RedisClusterConfig, RedisSinkConfig};
use crate::sink::redis::connection::{self, Target};
use crate::sink::redis::SinkError;

/// `cluster_enabled` from an `INFO cluster` reply; `None` if the reply has no such line.
pub(crate) fn cluster_enabled(info: &str) -> Option<bool> {
    info.lines()
        .find_map(|line| line.trim().strip_prefix("cluster_enabled:"))
        .map(|value| value.trim() == "1")
}

/// The refusal of a single-node configuration whose server is a cluster node.
pub(crate) fn single_node_is_a_cluster(address: &str) -> SinkError {
    SinkError::Config(format!(
        "`sink.redis.url`: {address} is a Redis Cluster node (INFO cluster: cluster_enabled:1). \
         Written to as a single Redis it would answer MOVED for most keys; list the cluster's \
         nodes in sink.redis.cluster.nodes instead (spec.redis.cluster on Kubernetes)"
    ))
}

/// How to reach the cluster node at `address` (`host:port`): with the TLS, user and password of
/// `sink.redis.url` (a seed, or a node the slot map names).
pub(crate) fn node_target(cfg: &RedisSinkConfig, address: &str) -> Result<Target, SinkError> {
    let (host, port) = address
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host.to_string(), port.parse::<u16>().ok()?)))
        .ok_or_else(|| SinkError::Config(format!("`sink.redis.cluster.nodes`: {address:?}")))?;
    let info = connection::connection_info(cfg)?;
    let addr = match info.addr() {
        ConnectionAddr::TcpTls { .. } => ConnectionAddr::TcpTls {
            host,
            port,
            insecure: false,
            tls_params: None,
        },
        _ => ConnectionAddr::Tcp(host, port),
    };
    connection::target_with_tls(info.set_addr(addr), None, cfg)
}

async fn info_cluster(
    cfg: &RedisSinkConfig,
    seed: &str,
    timeout: Duration,
) -> Result<String, SinkError> {
    let target = node_target(cfg, seed)?;
    let ask = async {
        let mut conn = target.connect(timeout).await?;
        redis::cmd("INFO")
            .arg("cluster")
            .query_async::<Value>(&mut conn)
            .await
    };
    let reply = tokio::time::timeout(timeout, ask)
        .await
        .map_err(|_| SinkError::timeout("asking a cluster seed node", timeout))?
        .map_err(|e| connection::explain(e, cfg))?;
    match reply {
        Value::BulkString(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Value::VerbatimString { text, .. } => Ok(text),
        other => Err(SinkError::Script(format!(
            "unexpected INFO reply {other:?}"
        ))),
    }
}

/// Asks the seed nodes of `cluster` whether they are cluster nodes: the first that answers
/// decides. A plain Redis is a configuration error; a cluster node is returned, to read the
/// slot map from. Unreachable seeds are retryable.
pub(crate) async fn check_seeds(
    cfg: &RedisSinkConfig,
    cluster: &RedisClusterConfig,
    timeout: Duration,
) -> Result<String, SinkError> {
    let mut last = SinkError::Config("`sink.redis.cluster.nodes` is empty".into());
    for seed in &cluster.nodes {
        match info_cluster(cfg, seed, timeout).await {
            Ok(info) if cluster_enabled(&info) == Some(true) => return Ok(seed.clone()),
            Ok(_) => {
                return Err(SinkError::Config(format!(
                    "`sink.redis.cluster.nodes`: {seed} is not a Redis Cluster node (INFO \
                     cluster: cluster_enabled is not 1); for a single Redis drop \
                     sink.redis.cluster and put its address in sink.redis.url"
                )))
            }
            Err(err @ SinkError::Config(_)) => return Err(err),
            Err(err) => last = err,
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_enabled_is_read_from_info_cluster() {
        assert_eq!(
            cluster_enabled("# Cluster\r\ncluster_enabled:1\r\n"),
            Some(true)
        );
        assert_eq!(
            cluster_enabled("# Cluster\r\ncluster_enabled:0\r\n"),
            Some(false)
        );
        assert_eq!(cluster_enabled("# Server\r\n"), None);
        let refusal = single_node_is_a_cluster("127.0.0.1:7000").to_string();
        assert!(refusal.contains("sink.redis.cluster.nodes"), "{refusal}");
        assert!(refusal.contains("sink.redis.url"), "{refusal}");
    }
}
