//! The cluster's shape as users see it (the job overview, the StreamJob's status, the
//! `streamjob_redis_cluster_*` gauges): which primaries serve slots, and which slots are
//! migrating between them. Read apart from the sink's own slot map, which only ever changes
//! when an apply or a read meets a redirect: a report must not move the map an apply in flight
//! planned its units with.

use std::collections::BTreeSet;

use redis::Value;

use super::nodes::Nodes;
use super::plan::SlotMap;
use crate::sink::redis::SinkError;

/// What [`Nodes::shape`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterShape {
    /// The primaries that serve slots, `host:port`, sorted.
    pub primaries: Vec<String>,
    /// Slots some primary is migrating out of or importing into itself.
    pub migrating: BTreeSet<u16>,
}

/// The slots a node is migrating or importing, from its `CLUSTER NODES` reply. Only a node's own
/// line (flagged `myself`) lists them, as `[slot->-target-id]` (migrating) or
/// `[slot-<-source-id]` (importing); the lines of other nodes never do.
pub fn migrations_in(cluster_nodes: &str) -> Vec<u16> {
    let Some(mine) = cluster_nodes.lines().find(|line| {
        line.split_whitespace()
            .nth(2)
            .is_some_and(|flags| flags.split(',').any(|f| f == "myself"))
    }) else {
        return Vec::new();
    };
    mine.split_whitespace()
        .filter_map(|field| field.strip_prefix('['))
        .filter_map(|marker| {
            let (slot, _) = marker.split_once("->-").or(marker.split_once("-<-"))?;
            slot.parse().ok()
        })
        .collect()
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    }
}

impl Nodes {
    /// Reads the slot map and asks every primary in it for its migrations. A migration shows on
    /// both of its nodes (migrating on the source, importing on the target), so a primary that
    /// does not answer (a failover under way) is left out rather than failing the whole read;
    /// only when none answers is the read an error.
    pub async fn shape(&self) -> Result<ClusterShape, SinkError> {
        let map: SlotMap = self.read_map().await?;
        let mut primaries = map.nodes().to_vec();
        primaries.sort();
        let mut migrating = BTreeSet::new();
        let mut answered = 0usize;
        let mut last = SinkError::Unavailable("no cluster primary answers".into());
        for address in &primaries {
            match self.cluster_nodes(address).await {
                Ok(reply) => {
                    answered += 1;
                    migrating.extend(migrations_in(&reply));
                }
                Err(err) => {
                    tracing::debug!(%address, %err, "CLUSTER NODES unanswered; left out of the shape");
                    last = err;
                }
            }
        }
        if answered == 0 {
            return Err(last);
        }
        Ok(ClusterShape {
            primaries,
            migrating,
        })
    }

    async fn cluster_nodes(&self, address: &str) -> Result<String, SinkError> {
        let mut conn = self.conn(address).await?;
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("NODES");
        let reply = tokio::time::timeout(self.timeout(), cmd.query_async::<Value>(&mut conn))
            .await
            .map_err(|_| SinkError::timeout("CLUSTER NODES", self.timeout()));
        let reply = match reply {
            Ok(Ok(reply)) => reply,
            Ok(Err(err)) => {
                self.forget(address);
                return Err(err.into());
            }
            Err(err) => {
                self.forget(address);
                return Err(err);
            }
        };
        text(&reply)
            .ok_or_else(|| SinkError::Script(format!("unexpected CLUSTER NODES reply {reply:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460 [93->-67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1] [77-<-292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f]
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30003@31003 master - 0 1426238318243 3 connected 10923-16383 [5->-e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca]
";

    #[test]
    fn a_node_lists_its_own_migrations_and_imports_only() {
        // The third node's marker is on another node's line: never counted from this reply.
        assert_eq!(migrations_in(NODES), vec![93, 77]);
    }

    #[test]
    fn a_settled_node_and_a_reply_without_myself_have_none() {
        let settled = "e7d1 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-16383\n";
        assert!(migrations_in(settled).is_empty());
        assert!(migrations_in("").is_empty());
        let no_myself = NODES.replace("myself,", "");
        assert!(migrations_in(&no_myself).is_empty());
    }
}
