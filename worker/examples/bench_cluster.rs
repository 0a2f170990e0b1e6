//! The Redis sink on one node and on Redis Clusters of 1, 2 and 3 primaries, in the same run
//! (issue #25).
//!
//! `cargo run --release -p streamjob-worker --features testkit --example bench_cluster [-- --events N --runs R]`
//!
//! Starts a plain `redis-server` and three clusters (1, 2 and 3 primaries, no replicas, no
//! persistence) on loopback ports, generates the lifecycle data set of `bench_sink` (4
//! partitions, sticky partitioner), and per topology and run: flushes every primary and resets
//! its statistics, then decodes, builds batches (`--batch`, default 1,000 events) and applies them through
//! `RedisSink` (the pipeline's calls: claim, then apply), 4 partitions concurrently. It reports
//! events/s, Redis commands per event (`INFO commandstats`, every call summed over the
//! primaries), and redis-server's own CPU (`INFO cpu`, user + sys) per event, summed over the
//! primaries and on the busiest one. Medians over the runs; Markdown on stdout.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::aio::MultiplexedConnection;
use streamjob_worker::config::{RedisClusterConfig, RedisSinkConfig};
use streamjob_worker::sink::redis::{ApplyOutcome, RedisSink, SinkOptions};
use streamjob_worker::testkit::lifecycle;
use streamjob_worker::testkit::redis::RedisServer;
use streamjob_worker::testkit::redis_cluster::{ClusterOptions, RedisCluster};
use streamjob_worker::transform::decode;

const PARTITIONS: usize = 4;

/// What one invocation measures.
struct Args {
    events: usize,
    runs: usize,
    /// Events per batch: slots written per event fall only past ~16,000 keys per batch.
    batch: usize,
}

fn parse_args() -> Args {
    let mut events = 200_000;
    let mut runs = 3;
    let mut batch = 1000;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match (a.as_str(), it.next().and_then(|v| v.parse().ok())) {
            ("--events", Some(v)) => events = v,
            ("--runs", Some(v)) => runs = v,
            ("--batch", Some(v)) => batch = v,
            _ => {
                eprintln!("usage: bench_cluster [--events N] [--runs R] [--batch EVENTS]");
                std::process::exit(2);
            }
        }
    }
    Args {
        events,
        runs,
        batch,
    }
}

/// Per partition, the payloads in offset order (as `bench_sink`).
fn generate(events: usize) -> Vec<Vec<Vec<u8>>> {
    let mut rng = StdRng::seed_from_u64(42);
    let mut partitions: Vec<Vec<Vec<u8>>> = vec![Vec::new(); PARTITIONS];
    let mut sticky = 0usize;
    for (i, payload) in lifecycle::payloads(events, 42).into_iter().enumerate() {
        if i % 100 == 0 && i > 0 {
            sticky = rng.random_range(0..PARTITIONS);
        }
        partitions[sticky].push(payload);
    }
    partitions
}

async fn conn(port: u16) -> MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .expect("url")
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("connect")
}

async fn info(conn: &mut MultiplexedConnection, section: &str) -> String {
    redis::cmd("INFO")
        .arg(section)
        .query_async(conn)
        .await
        .expect("INFO")
}

/// redis-server's CPU seconds (user + sys) and, per command, its calls and microseconds since
/// the last reset (`INFO commandstats`: a script's inner calls are counted too).
async fn usage(conn: &mut MultiplexedConnection) -> (f64, BTreeMap<String, (u64, u64)>) {
    let cpu: f64 = info(conn, "cpu")
        .await
        .lines()
        .filter_map(|l| {
            l.strip_prefix("used_cpu_user:")
                .or_else(|| l.strip_prefix("used_cpu_sys:"))
        })
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum();
    let mut commands = BTreeMap::new();
    for line in info(conn, "commandstats").await.lines() {
        // cmdstat_hget:calls=1,usec=2,usec_per_call=2.00,…
        let Some((name, stats)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let field = |key: &str| {
            stats
                .split(',')
                .find_map(|kv| kv.strip_prefix(key))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        commands.insert(name.to_string(), (field("calls="), field("usec=")));
    }
    (cpu, commands)
}

/// This process's CPU seconds so far (user + system, `/proc/self/stat`).
fn own_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime and stime are 14 and 15.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: f64 = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse::<f64>().ok())
        .sum();
    ticks / 100.0
}

async fn reset(conn: &mut MultiplexedConnection) {
    for args in [&["FLUSHALL"][..], &["CONFIG", "RESETSTAT"][..]] {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        let _: () = cmd.query_async(conn).await.expect("reset");
    }
}

struct Measure {
    events_per_sec: f64,
    commands_per_event: f64,
    cpu_sum_us: f64,
    cpu_busiest_us: f64,
    /// This process's CPU per event (decode, batch building, the sink's client side).
    client_us: f64,
    /// Per command: calls and microseconds per event, summed over the primaries.
    per_command: Vec<(String, f64, f64)>,
}

/// One run through the sink configured by `cfg`, whose primaries listen on `ports`.
async fn run(
    cfg: &RedisSinkConfig,
    ports: &[u16],
    payloads: &'static [Vec<Vec<u8>>],
    batch: usize,
) -> Measure {
    let mut conns = Vec::new();
    for port in ports {
        let mut c = conn(*port).await;
        reset(&mut c).await;
        conns.push(c);
    }
    let options = SinkOptions {
        call_timeout: Duration::from_secs(60),
        ..SinkOptions::default()
    };
    let sink = RedisSink::connect_with(cfg, "bench", "austinTraceLog", options)
        .await
        .expect("connect");
    let mut before = Vec::new();
    for c in &mut conns {
        // The claims' reads are not the run's: start the counters here.
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(c)
            .await
            .expect("reset");
        before.push(usage(c).await);
    }
    let events: usize = payloads.iter().map(Vec::len).sum();
    let start = Instant::now();
    let client_before = own_cpu_seconds();
    let tasks: Vec<_> = payloads
        .iter()
        .enumerate()
        .map(|(partition, records)| {
            tokio::spawn(apply_all(sink.clone(), partition as i32, records, batch))
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let client_us = (own_cpu_seconds() - client_before) * 1e6 / events as f64;
    let mut cpu = Vec::new();
    let mut per_command: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (c, (cpu0, _)) in conns.iter_mut().zip(before) {
        // Statistics were reset before the run: what they hold now is the run's.
        let (cpu1, commands) = usage(c).await;
        cpu.push((cpu1 - cpu0) * 1e6 / events as f64);
        for (name, (calls, usec)) in commands {
            let sum = per_command.entry(name).or_default();
            sum.0 += calls;
            sum.1 += usec;
        }
    }
    let calls: u64 = per_command.values().map(|(calls, _)| calls).sum();
    Measure {
        events_per_sec: events as f64 / elapsed,
        commands_per_event: calls as f64 / events as f64,
        cpu_sum_us: cpu.iter().sum(),
        cpu_busiest_us: cpu.iter().copied().fold(0.0, f64::max),
        client_us,
        per_command: per_command
            .into_iter()
            .map(|(name, (calls, usec))| {
                let per_event = |n: u64| n as f64 / events as f64;
                (name, per_event(calls), per_event(usec))
            })
            .collect(),
    }
}

async fn apply_all(sink: RedisSink, partition: i32, records: &'static [Vec<u8>], batch: usize) {
    let epoch = sink
        .claim_from(partition, 1, Some(0))
        .await
        .expect("claim")
        .fence
        .epoch;
    for (index, chunk) in records.chunks(batch).enumerate() {
        let mut builder = sink.batch_builder(partition, epoch);
        let base = (index * batch) as i64;
        for (i, payload) in chunk.iter().enumerate() {
            match decode(payload) {
                Ok(ev) => builder.push_event(base + i as i64, &ev),
                Err(_) => builder.push_skipped(base + i as i64),
            }
        }
        let batch = builder.build(SystemTime::now());
        match sink.apply(&batch).await.expect("apply") {
            ApplyOutcome::Applied { .. } => {}
            ApplyOutcome::AlreadyApplied => panic!("fresh data was already applied"),
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let Args {
        events,
        runs,
        batch,
    } = parse_args();
    let payloads: &'static [Vec<Vec<u8>>] = Box::leak(generate(events).into_boxed_slice());
    let single = RedisServer::start().expect("redis-server");
    let clusters: Vec<RedisCluster> = [1, 2, 3]
        .into_iter()
        .map(|primaries| {
            RedisCluster::start_with(ClusterOptions {
                primaries,
                replicas: 0,
                persistence: false,
            })
            .expect("cluster")
        })
        .collect();
    let mut setups: Vec<(String, RedisSinkConfig, Vec<u16>)> = vec![(
        "one node".into(),
        RedisSinkConfig {
            url: single.url(),
            ..RedisSinkConfig::default()
        },
        vec![single.port()],
    )];
    for cluster in &clusters {
        let ports: Vec<u16> = (0..cluster.len()).map(|i| cluster.node(i).port()).collect();
        let cfg = RedisSinkConfig {
            url: "redis://cluster".into(),
            cluster: Some(RedisClusterConfig {
                nodes: cluster.seeds(),
            }),
            ..RedisSinkConfig::default()
        };
        setups.push((format!("cluster, {} primaries", ports.len()), cfg, ports));
    }
    let mut results: Vec<Vec<Measure>> = setups.iter().map(|_| Vec::new()).collect();
    // Interleaved: each run measures every topology once, so machine noise hits them alike.
    for _ in 0..runs {
        for ((_, cfg, ports), out) in setups.iter().zip(&mut results) {
            out.push(run(cfg, ports, payloads, batch).await);
        }
    }
    println!(
        "{events} events, {PARTITIONS} partitions, batches of {batch}, median of {runs} runs\n"
    );
    println!("| topology | events/s | commands/event | Redis CPU µs/event, summed | busiest primary | sum ÷ one node | busiest ÷ one node | client CPU µs/event |");
    println!("|---|---|---|---|---|---|---|---|");
    let pick = |m: &[Measure], f: fn(&Measure) -> f64| median(m.iter().map(f).collect());
    let base = pick(&results[0], |m| m.cpu_sum_us);
    for ((label, _, _), m) in setups.iter().zip(&results) {
        let sum = pick(m, |m| m.cpu_sum_us);
        let busiest = pick(m, |m| m.cpu_busiest_us);
        println!(
            "| {label} | {:.0} | {:.2} | {sum:.2} | {busiest:.2} | {:.2} | {:.2} | {:.2} |",
            pick(m, |m| m.events_per_sec),
            pick(m, |m| m.commands_per_event),
            sum / base,
            busiest / base,
            pick(m, |m| m.client_us),
        );
    }
    println!("\nWhere Redis spends it (last run; calls and µs per event from `INFO commandstats`, summed over the primaries; a script's inner calls are in both the script's line and their own):\n");
    println!("| topology | command | calls/event | µs/event |");
    println!("|---|---|---|---|");
    for ((label, _, _), m) in setups.iter().zip(&results) {
        let Some(last) = m.last() else { continue };
        let mut rows = last.per_command.clone();
        rows.sort_by(|a, b| b.2.total_cmp(&a.2));
        for (name, calls, usec) in rows.iter().filter(|r| r.2 >= 0.05) {
            println!("| {label} | {name} | {calls:.2} | {usec:.2} |");
        }
    }
}
