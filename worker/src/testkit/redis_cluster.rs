//! A real Redis Cluster per test: primaries and replicas (`redis-server --cluster-enabled yes`)
//! on free loopback ports, each in its own temp dir, joined with `redis-cli --cluster create`,
//! killed on drop. Helpers move slots (`--cluster reshard`), add a primary and rebalance, SIGKILL
//! a primary and wait for its replica's promotion (after cutting the replica off, so that it
//! misses acknowledged writes), and restart every node from its AOF, whole or cut back to where
//! it ended earlier (acknowledged writes lost on every shard).
//!
//! Synchronous and std-only like [`super::redis`]; `redis-cli` comes with Debian's
//! `redis-server` package (`redis-tools`), which `scripts/setup.sh --test` installs.

use std::io;
use std::ops::Range;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::redis::{RedisOptions, RedisServer};

/// How long a cluster may take to agree on its slots after a change.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// `cluster-node-timeout` (ms): a killed primary's replica is promoted a few seconds later.
pub const NODE_TIMEOUT_MS: u64 = 2000;

/// How to run the cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub primaries: usize,
    /// Replicas per primary.
    pub replicas: usize,
    /// `appendonly yes` with `appendfsync always` on every node, so a restarted node comes back
    /// with all it acknowledged.
    pub persistence: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            primaries: 3,
            replicas: 1,
            persistence: false,
        }
    }
}

/// One node as `CLUSTER NODES` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: String,
    pub port: u16,
    pub primary: bool,
    /// For a replica, its primary's id.
    pub primary_id: Option<String>,
    pub failed: bool,
    /// Slot ranges (inclusive) it serves, without migration markers.
    pub slots: Vec<(u16, u16)>,
}

impl NodeInfo {
    pub fn slot_count(&self) -> usize {
        self.slots
            .iter()
            .map(|(a, b)| usize::from(*b - *a) + 1)
            .sum()
    }
}

/// Where each node's AOF ended at some moment ([`RedisCluster::aof_ends`]).
#[derive(Debug, Clone)]
pub struct AofEnds(Vec<(PathBuf, u64)>);

impl AofEnds {
    /// Bytes each file has grown since `earlier` (0 for a file `earlier` does not name): how much
    /// each node has appended, and so would lose if cut back to `earlier`.
    pub fn grown_since(&self, earlier: &AofEnds) -> Vec<u64> {
        self.0
            .iter()
            .map(|(path, len)| {
                earlier
                    .0
                    .iter()
                    .find(|(p, _)| p == path)
                    .map_or(0, |(_, then)| len.saturating_sub(*then))
            })
            .collect()
    }

    /// Truncates each file back to where it ended then; `now` must name the same files.
    fn cut_back(&self, now: &AofEnds) -> io::Result<()> {
        if let Some((path, _)) = now
            .0
            .iter()
            .find(|(p, _)| !self.0.iter().any(|(q, _)| q == p))
        {
            return Err(io::Error::other(format!(
                "{} appeared since (an AOF rewrite)",
                path.display()
            )));
        }
        for (path, len) in &self.0 {
            std::fs::OpenOptions::new()
                .write(true)
                .open(path)?
                .set_len(*len)?;
        }
        Ok(())
    }
}

/// A running cluster. Nodes are never removed from `nodes` (a killed one stays, not running),
/// so an index names the same node for the whole test.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    options: ClusterOptions,
}

fn node_options(options: &ClusterOptions) -> RedisOptions {
    RedisOptions {
        persistence: options.persistence,
        extra_args: [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            &NODE_TIMEOUT_MS.to_string(),
            // A replica may be promoted however long it was cut off (tests pause them).
            "--cluster-replica-validity-factor",
            "0",
        ]
        .map(String::from)
        .to_vec(),
        ..RedisOptions::default()
    }
}

/// Runs `redis-cli` with `args`; its output, or an error with it.
fn redis_cli(args: &[String]) -> io::Result<String> {
    let output = Command::new("redis-cli")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run redis-cli: {e}")))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() || text.contains("[ERR]") {
        return Err(io::Error::other(format!(
            "redis-cli {} failed: {text}",
            args.join(" ")
        )));
    }
    Ok(text)
}

fn parse_nodes(text: &str) -> Vec<NodeInfo> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let address = fields.get(1)?;
            let port = address.split(['@', ':']).nth(1)?.parse().ok()?;
            let flags = fields.get(2)?;
            let slots = fields
                .iter()
                .skip(8)
                .filter(|f| !f.starts_with('['))
                .filter_map(|range| match range.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => range.parse().ok().map(|s| (s, s)),
                })
                .collect();
            Some(NodeInfo {
                id: fields[0].to_string(),
                port,
                primary: flags.contains("master"),
                primary_id: fields.get(3).filter(|p| **p != "-").map(|p| p.to_string()),
                failed: flags.contains("fail"),
                slots,
            })
        })
        .collect()
}

/// `--cluster create` wants at least 3 primaries: 1 or 2 take even shares of the slots
/// themselves and meet each other.
fn join_small(nodes: &[RedisServer]) -> io::Result<()> {
    let count = nodes.len();
    for (index, node) in nodes.iter().enumerate() {
        let first = (index * 16384 / count).to_string();
        let last = ((index + 1) * 16384 / count - 1).to_string();
        node.command(&["CLUSTER", "ADDSLOTSRANGE", &first, &last])?;
    }
    for node in &nodes[1..] {
        let port = node.port().to_string();
        nodes[0].command(&["CLUSTER", "MEET", "127.0.0.1", &port])?;
    }
    Ok(())
}

impl RedisCluster {
    /// 3 primaries with one replica each.
    pub fn start() -> io::Result<Self> {
        Self::start_with(ClusterOptions::default())
    }

    pub fn start_with(options: ClusterOptions) -> io::Result<Self> {
        let count = options.primaries * (1 + options.replicas);
        let nodes = (0..count)
            .map(|_| RedisServer::start_with(node_options(&options)))
            .collect::<io::Result<Vec<_>>>()?;
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())));
        args.extend([
            "--cluster-replicas".into(),
            options.replicas.to_string(),
            "--cluster-yes".into(),
        ]);
        if options.primaries < 3 && options.replicas == 0 {
            join_small(&nodes)?;
        } else {
            redis_cli(&args)?;
        }
        let cluster = Self { nodes, options };
        cluster.wait_settled()?;
        Ok(cluster)
    }

    /// Seed addresses, `127.0.0.1:port`, of every node started.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect()
    }

    pub fn node(&self, index: usize) -> &RedisServer {
        &self.nodes[index]
    }

    pub fn node_mut(&mut self, index: usize) -> &mut RedisServer {
        &mut self.nodes[index]
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The cluster as a running node sees it.
    pub fn topology(&self) -> io::Result<Vec<NodeInfo>> {
        let mut last = io::Error::other("no node is running");
        for node in &self.nodes {
            match node.command(&["CLUSTER", "NODES"]) {
                Ok(reply) if reply.starts_with('$') => return Ok(parse_nodes(&reply)),
                Ok(reply) => last = io::Error::other(reply),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The index of the running node with `port`.
    fn index_of(&self, port: u16) -> Option<usize> {
        self.nodes.iter().position(|n| n.port() == port)
    }

    /// Indexes of the primaries (by the running nodes' view), in port order.
    pub fn primaries(&self) -> io::Result<Vec<usize>> {
        let mut primaries: Vec<usize> = self
            .topology()?
            .iter()
            .filter(|n| n.primary && !n.failed && !n.slots.is_empty())
            .filter_map(|n| self.index_of(n.port))
            .collect();
        primaries.sort_unstable();
        Ok(primaries)
    }

    /// Waits until every running node reports `cluster_state:ok`, agrees on the slot map, and no
    /// slot is migrating.
    pub fn wait_settled(&self) -> io::Result<()> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let seeds = self.running_seed();
            let check = seeds.and_then(|seed| {
                let info = self.nodes[seed].command(&["CLUSTER", "INFO"])?;
                if !info.contains("cluster_state:ok") {
                    return Err(io::Error::other(info));
                }
                redis_cli(&["--cluster".into(), "check".into(), self.address(seed)])
            });
            let all_ok = check.is_ok()
                && self.nodes.iter().all(|n| {
                    !n.command(&["PING"]).is_ok_and(|r| r.contains("PONG"))
                        || n.command(&["CLUSTER", "INFO"])
                            .is_ok_and(|i| i.contains("cluster_state:ok"))
                });
            match check {
                Ok(_) if all_ok => return Ok(()),
                Ok(_) => {}
                Err(e) if Instant::now() > deadline => {
                    return Err(io::Error::other(format!(
                        "cluster not settled after {SETTLE_TIMEOUT:?}: {e}"
                    )))
                }
                Err(_) => {}
            }
            if Instant::now() > deadline {
                return Err(io::Error::other("cluster nodes disagree on cluster_state"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn address(&self, index: usize) -> String {
        format!("127.0.0.1:{}", self.nodes[index].port())
    }

    fn running_seed(&self) -> io::Result<usize> {
        self.nodes
            .iter()
            .position(|n| n.command(&["PING"]).is_ok_and(|r| r.contains("PONG")))
            .ok_or_else(|| io::Error::other("no node is running"))
    }

    fn id_of(&self, index: usize) -> io::Result<String> {
        let reply = self.nodes[index].command(&["CLUSTER", "MYID"])?;
        reply
            .lines()
            .nth(1)
            .map(str::to_string)
            .ok_or_else(|| io::Error::other(format!("CLUSTER MYID: {reply}")))
    }

    /// Moves `slots` slots from primary `from` to primary `to` with `redis-cli --cluster
    /// reshard` (keys migrate with `MIGRATE` in pipelines of `pipeline` keys). Blocks until done.
    pub fn reshard(&self, from: usize, to: usize, slots: usize, pipeline: usize) -> io::Result<()> {
        redis_cli(&[
            "--cluster".into(),
            "reshard".into(),
            self.address(from),
            "--cluster-from".into(),
            self.id_of(from)?,
            "--cluster-to".into(),
            self.id_of(to)?,
            "--cluster-slots".into(),
            slots.to_string(),
            "--cluster-pipeline".into(),
            pipeline.to_string(),
            "--cluster-yes".into(),
        ])?;
        self.wait_settled()
    }

    /// Marks `slot` as migrating from primary `from` to primary `to` (`CLUSTER SETSLOT …
    /// IMPORTING` on `to`, then `MIGRATING` on `from`, as `redis-cli --cluster reshard` begins)
    /// and moves no key: the slot stays half-resharded until [`RedisCluster::end_migration`].
    pub fn begin_migration(&self, slot: u16, from: usize, to: usize) -> io::Result<()> {
        self.begin_migrations(slot..slot + 1, from, to)
    }

    /// [`RedisCluster::begin_migration`] for every slot of `slots`, one pipeline per node (a
    /// command at a time takes [`RedisServer::command`]'s 100 ms each).
    pub fn begin_migrations(&self, slots: Range<u16>, from: usize, to: usize) -> io::Result<()> {
        let (from_id, to_id) = (self.id_of(from)?, self.id_of(to)?);
        self.setslots(to, slots.clone(), &["IMPORTING", &from_id])?;
        self.setslots(from, slots, &["MIGRATING", &to_id])
    }

    /// `CLUSTER SETSLOT slot how…` on node `index` for every slot of `slots`, in one pipeline;
    /// refused at the first error reply.
    fn setslots(&self, index: usize, slots: Range<u16>, how: &[&str]) -> io::Result<()> {
        let client = redis::Client::open(self.nodes[index].url()).map_err(io::Error::other)?;
        let mut conn = client.get_connection().map_err(io::Error::other)?;
        let mut pipe = redis::pipe();
        for slot in slots {
            pipe.cmd("CLUSTER").arg("SETSLOT").arg(slot).arg(how);
        }
        pipe.query::<()>(&mut conn).map_err(io::Error::other)
    }

    /// Takes back a [`RedisCluster::begin_migration`]: `CLUSTER SETSLOT slot STABLE` on both.
    pub fn end_migration(&self, slot: u16, from: usize, to: usize) -> io::Result<()> {
        for node in [from, to] {
            self.setslots(node, slot..slot + 1, &["STABLE"])?;
        }
        Ok(())
    }

    /// Completes every half-done migration ([`RedisCluster::begin_migration`]) with
    /// `redis-cli --cluster fix`: it moves the slots' remaining keys with `MIGRATE` and gives
    /// each slot to its importing node, as an interrupted `reshard` is finished in production.
    pub fn fix_open_slots(&self) -> io::Result<()> {
        let seed = self.running_seed()?;
        redis_cli(&[
            "--cluster".into(),
            "fix".into(),
            self.address(seed),
            "--cluster-yes".into(),
        ])?;
        self.wait_settled()
    }

    /// Starts a new empty primary and adds it to the cluster; its index.
    pub fn add_primary(&mut self) -> io::Result<usize> {
        let node = RedisServer::start_with(node_options(&self.options))?;
        let seed = self.running_seed()?;
        redis_cli(&[
            "--cluster".into(),
            "add-node".into(),
            format!("127.0.0.1:{}", node.port()),
            self.address(seed),
        ])?;
        self.nodes.push(node);
        let index = self.nodes.len() - 1;
        // add-node returns once the node was introduced; wait until every running node knows
        // it (a rebalance moving slots to it fails with "Unknown node" on one that does not).
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        let id = self.id_of(index)?;
        while !self.nodes.iter().all(|n| {
            !n.command(&["PING"]).is_ok_and(|r| r.contains("PONG"))
                || n.command(&["CLUSTER", "NODES"])
                    .is_ok_and(|nodes| nodes.contains(&id))
        }) {
            if Instant::now() > deadline {
                return Err(io::Error::other("the new primary never joined"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.wait_settled()?;
        Ok(index)
    }

    /// `redis-cli --cluster rebalance --cluster-use-empty-masters`: spreads the slots evenly,
    /// over empty primaries too. Blocks until done.
    pub fn rebalance(&self, pipeline: usize) -> io::Result<()> {
        let seed = self.running_seed()?;
        redis_cli(&[
            "--cluster".into(),
            "rebalance".into(),
            self.address(seed),
            "--cluster-use-empty-masters".into(),
            "--cluster-pipeline".into(),
            pipeline.to_string(),
        ])?;
        self.wait_settled()
    }

    /// SIGKILLs primary `index` and waits until one of its replicas is promoted and the cluster
    /// is `ok` again; the new primary's index. A replica paused before (`node(i).pause(true)`)
    /// is resumed right after the kill, so it is promoted without what it missed: the primary's
    /// acknowledged writes of that time are lost.
    pub fn kill_primary(&mut self, index: usize) -> io::Result<usize> {
        // Asked of the primary itself: a paused replica would not answer.
        let id = self.id_of(index)?;
        let reply = self.nodes[index].command(&["CLUSTER", "REPLICAS", &id])?;
        let replicas: Vec<u16> = parse_nodes(&reply).iter().map(|n| n.port).collect();
        if replicas.is_empty() {
            return Err(io::Error::other("the primary has no replica to promote"));
        }
        self.nodes[index].stop();
        for &port in &replicas {
            if let Some(replica) = self.index_of(port) {
                // SIGCONT: a no-op for a replica that was not paused.
                self.nodes[replica].pause(false)?;
            }
        }
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let promoted = self
                .topology()
                .ok()
                .and_then(|nodes| {
                    nodes
                        .into_iter()
                        .find(|n| n.primary && replicas.contains(&n.port) && !n.slots.is_empty())
                })
                .and_then(|n| self.index_of(n.port));
            if let Some(promoted) = promoted {
                self.wait_settled()?;
                return Ok(promoted);
            }
            if Instant::now() > deadline {
                return Err(io::Error::other("no replica was promoted"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILLs every running node, then starts each again on its port and directory (its
    /// `nodes.conf` and, with `persistence`, its AOF), and waits until the cluster is `ok`.
    pub fn restart_all(&mut self) -> io::Result<()> {
        self.restart_running(None)
    }

    fn restart_running(&mut self, cut_back_to: Option<&AofEnds>) -> io::Result<()> {
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_running())
            .collect();
        for &i in &running {
            self.nodes[i].stop();
        }
        if let Some(ends) = cut_back_to {
            ends.cut_back(&self.aof_ends()?)?;
        }
        for &i in &running {
            self.nodes[i].restart()?;
        }
        self.wait_settled()
    }

    /// Where every node's AOF ends now (its incremental files and their sizes), for
    /// [`Self::restart_all_losing_since`]. Needs `persistence`.
    pub fn aof_ends(&self) -> io::Result<AofEnds> {
        let mut ends = Vec::new();
        for node in &self.nodes {
            let dir = node.dir().join("appendonlydir");
            if !dir.is_dir() {
                continue;
            }
            for entry in std::fs::read_dir(&dir)? {
                let path = entry?.path();
                if path.to_string_lossy().ends_with(".incr.aof") {
                    ends.push((path.clone(), std::fs::metadata(&path)?.len()));
                }
            }
        }
        if ends.is_empty() {
            return Err(io::Error::other(
                "no AOF (start the cluster with persistence)",
            ));
        }
        Ok(AofEnds(ends))
    }

    /// [`Self::restart_all`], every node having lost what it appended to its AOF since `ends`:
    /// the whole cluster comes back from AOFs that lost their last writes (as after a power cut
    /// with `appendfsync everysec`), each node consistently with itself (Redis drops a truncated
    /// last command or `MULTI` block). Fails if a node rewrote its AOF since (new files).
    pub fn restart_all_losing_since(&mut self, ends: &AofEnds) -> io::Result<()> {
        self.restart_running(Some(ends))
    }

    /// Makes `replica` miss everything primary `primary` acknowledges from now on: pauses it
    /// (`SIGSTOP`) and drops the replication link at the primary, since what the primary already
    /// sent would otherwise still reach the replica from its socket buffer. [`Self::kill_primary`]
    /// then promotes it without those writes.
    pub fn cut_off_replica(&self, primary: usize, replica: usize) -> io::Result<()> {
        self.nodes[replica].pause(true)?;
        let killed = self.nodes[primary].command(&["CLIENT", "KILL", "TYPE", "replica"])?;
        if !killed.starts_with(":1") {
            return Err(io::Error::other(format!(
                "expected to drop one replica link: {killed}"
            )));
        }
        Ok(())
    }

    /// Waits until a replica of primary `index` has acknowledged everything it was sent
    /// (`WAIT 1`): a new cluster's replicas take a few seconds to make their first sync.
    pub fn wait_replicated(&self, index: usize) -> io::Result<()> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let acked = self.nodes[index].command(&["WAIT", "1", "1000"])?;
            if acked
                .trim_start_matches(':')
                .trim()
                .parse::<u32>()
                .unwrap_or(0)
                >= 1
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!("no replica in sync: {acked}")));
            }
        }
    }

    /// The replicas of primary `index`.
    pub fn replicas_of(&self, index: usize) -> io::Result<Vec<usize>> {
        let id = self.id_of(index)?;
        Ok(self
            .topology()?
            .iter()
            .filter(|n| n.primary_id.as_deref() == Some(id.as_str()))
            .filter_map(|n| self.index_of(n.port))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_lines_are_parsed_with_slots_and_without_migration_markers() {
        let text = "\
670078 127.0.0.1:7101@17101 myself,master - 0 0 1 connected 0-5460 [3300->-4441]
4441 127.0.0.1:7102@17102 master - 0 0 2 connected 5461-10922 12000 [3300-<-6700]
bd52 127.0.0.1:7106@17106 slave 4441 0 0 2 connected
dead 127.0.0.1:7107@17107 master,fail - 0 0 4 connected
";
        let nodes = parse_nodes(text);
        assert_eq!(nodes.len(), 4);
        assert_eq!(nodes[0].slots, vec![(0, 5460)]);
        assert_eq!(nodes[1].slots, vec![(5461, 10922), (12000, 12000)]);
        assert_eq!(nodes[1].slot_count(), 5463);
        assert_eq!(nodes[2].primary_id.as_deref(), Some("4441"));
        assert!(!nodes[2].primary);
        assert!(nodes[3].failed);
    }
}
