//! Redis sink micro-benchmark.
//!
//! `cargo run --release -p streamjob-worker --features testkit --example bench_sink [-- --events N --runs R]`
//!
//! Starts a fresh `redis-server` (no persistence), generates a synthetic 4-partition AnchorInfo
//! data set (`testkit::lifecycle`: messages with realistic state lifecycles, 1–3 receivers from
//! 100k users, 50 businessIds, keyless records spread by a sticky partitioner) and measures, in
//! the same run:
//! - `redis-benchmark -P 64` LPUSH and HINCRBY rates (what this Redis does with raw commands);
//! - upstream's per-event command stream (LPUSH+EXPIRE per messageId and per id, HINCRBY+EXPIRE per
//!   template) replayed fully pipelined by 4 concurrent partition tasks: the ceiling of any
//!   implementation that writes the way upstream does;
//! - streamjob's path: decode + BatchBuilder (1000 events) + RedisSink::apply, 4 partitions
//!   concurrently.
//!
//! Each measurement runs `--runs` times on a flushed Redis; medians are printed as Markdown.

use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use streamjob_worker::config::RedisSinkConfig;
use streamjob_worker::sink::redis::{ApplyOutcome, Layout, RedisSink, SinkOptions};
use streamjob_worker::testkit::lifecycle;
use streamjob_worker::testkit::redis::RedisServer;
use streamjob_worker::testkit::upstream::upstream_pipeline;
use streamjob_worker::transform::{decode, AnchorInfo};

const PARTITIONS: usize = 4;
const BATCH_EVENTS: usize = 1000;
const UPSTREAM_EVENTS_PER_PIPELINE: usize = 1000;

struct Args {
    events: usize,
    runs: usize,
    /// Print Redis' per-command statistics after each path (where Redis spends its time).
    stats: bool,
}

fn parse_args() -> Args {
    let mut args = Args {
        events: 400_000,
        runs: 3,
        stats: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        if a == "--stats" {
            args.stats = true;
            continue;
        }
        let value = it.next().and_then(|v| v.parse().ok());
        match (a.as_str(), value) {
            ("--events", Some(v)) => args.events = v,
            ("--runs", Some(v)) => args.runs = v,
            _ => {
                eprintln!("usage: bench_sink [--events N] [--runs R] [--stats]");
                std::process::exit(2);
            }
        }
    }
    args
}

/// Per partition, the record payloads in offset order: the lifecycle data set
/// (`testkit::lifecycle`), keyless records spread the way Java's sticky partitioner does (about
/// 100 consecutive records per partition).
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

/// Big pipelines on a loaded machine outlive redis-rs' default 500 ms response timeout.
fn no_timeout() -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new().set_response_timeout(None)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn redis_cpu_secs(conn: &mut redis::aio::MultiplexedConnection) -> f64 {
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(conn)
        .await
        .expect("INFO cpu");
    info.lines()
        .filter_map(|l| {
            l.strip_prefix("used_cpu_user:")
                .or_else(|| l.strip_prefix("used_cpu_sys:"))
        })
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum()
}

/// This process's CPU time (user + system), from /proc/self/stat.
fn own_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the command name.
    (ticks(11) + ticks(12)) / 100.0
}

async fn flush(conn: &mut redis::aio::MultiplexedConnection) {
    let _: () = redis::cmd("FLUSHALL")
        .query_async(conn)
        .await
        .expect("FLUSHALL");
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(conn)
        .await
        .expect("CONFIG RESETSTAT");
}

async fn print_command_stats(label: &str, conn: &mut redis::aio::MultiplexedConnection) {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("INFO commandstats");
    eprintln!("-- {label}: Redis commandstats");
    for line in info.lines().filter(|l| l.starts_with("cmdstat_")) {
        eprintln!("   {line}");
    }
}

struct Measure {
    events_per_sec: f64,
    commands_per_event: f64,
    redis_cpu_us_per_event: f64,
    client_cpu_us_per_event: f64,
}

async fn run_upstream(
    server: &RedisServer,
    decoded: &[Vec<AnchorInfo<'static>>],
    conn: &mut redis::aio::MultiplexedConnection,
) -> Measure {
    flush(conn).await;
    let layout = Layout::new("", "Asia/Shanghai", "bench", "austinTraceLog").expect("layout");
    let now = SystemTime::now();
    // Pipelines are built before the clock starts: only Redis' side is measured here.
    let mut commands = 0usize;
    let mut pipelines: Vec<Vec<redis::Pipeline>> = Vec::new();
    for events in decoded {
        let mut per_partition = Vec::new();
        for chunk in events.chunks(UPSTREAM_EVENTS_PER_PIPELINE) {
            let pipe = upstream_pipeline(&layout, chunk, now);
            commands += pipe.cmd_iter().count();
            per_partition.push(pipe);
        }
        pipelines.push(per_partition);
    }
    let events: usize = decoded.iter().map(Vec::len).sum();
    let client = redis::Client::open(server.url()).expect("url");
    let cpu0 = redis_cpu_secs(conn).await;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for per_partition in pipelines {
        let mut c = client
            .get_multiplexed_async_connection_with_config(&no_timeout())
            .await
            .expect("connect");
        tasks.push(tokio::spawn(async move {
            for pipe in per_partition {
                let _: () = pipe.query_async(&mut c).await.expect("pipeline");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu1 = redis_cpu_secs(conn).await;
    Measure {
        events_per_sec: events as f64 / elapsed,
        commands_per_event: commands as f64 / events as f64,
        redis_cpu_us_per_event: (cpu1 - cpu0) * 1e6 / events as f64,
        client_cpu_us_per_event: f64::NAN,
    }
}

async fn run_sink(
    server: &RedisServer,
    payloads: &'static [Vec<Vec<u8>>],
    conn: &mut redis::aio::MultiplexedConnection,
) -> Measure {
    flush(conn).await;
    let cfg = RedisSinkConfig {
        url: server.url(),
        ..RedisSinkConfig::default()
    };
    let options = SinkOptions {
        call_timeout: Duration::from_secs(60),
        ..SinkOptions::default()
    };
    let sink = RedisSink::connect_with(&cfg, "bench", "austinTraceLog", options)
        .await
        .expect("connect");
    let events: usize = payloads.iter().map(Vec::len).sum();
    let cpu0 = redis_cpu_secs(conn).await;
    let own0 = own_cpu_secs();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (partition, records) in payloads.iter().enumerate() {
        let sink = sink.clone();
        tasks.push(tokio::spawn(async move {
            let epoch = sink.claim(partition as i32).await.expect("claim").epoch;
            let mut commands = 0usize;
            for (chunk_index, chunk) in records.chunks(BATCH_EVENTS).enumerate() {
                let mut builder = sink.batch_builder(partition as i32, epoch);
                let base = (chunk_index * BATCH_EVENTS) as i64;
                for (i, payload) in chunk.iter().enumerate() {
                    match decode(payload) {
                        Ok(ev) => builder.push_event(base + i as i64, &ev),
                        Err(_) => builder.push_skipped(base + i as i64),
                    }
                }
                let batch = builder.build(SystemTime::now());
                match sink.apply(&batch).await.expect("apply") {
                    ApplyOutcome::Applied { commands: c, .. } => commands += c,
                    ApplyOutcome::AlreadyApplied => panic!("fresh data was already applied"),
                }
            }
            commands
        }));
    }
    let mut commands = 0;
    for t in tasks {
        commands += t.await.expect("task");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let own1 = own_cpu_secs();
    let cpu1 = redis_cpu_secs(conn).await;
    Measure {
        events_per_sec: events as f64 / elapsed,
        commands_per_event: commands as f64 / events as f64,
        redis_cpu_us_per_event: (cpu1 - cpu0) * 1e6 / events as f64,
        client_cpu_us_per_event: (own1 - own0) * 1e6 / events as f64,
    }
}

fn redis_benchmark(port: u16, args: &[&str]) -> f64 {
    let out = Command::new("redis-benchmark")
        .args([
            "-p",
            &port.to_string(),
            "-P",
            "64",
            "-n",
            "2000000",
            "-q",
            "-r",
            "100000",
        ])
        .args(args)
        .output()
        .expect("redis-benchmark runs");
    let text = String::from_utf8_lossy(&out.stdout);
    // "LPUSH: 1234567.00 requests per second, p50=..." (the last \r-separated progress line)
    text.rsplit(['\r', '\n'])
        .filter_map(|l| l.split_once(": ").map(|(_, rest)| rest))
        .filter_map(|rest| rest.split_whitespace().next())
        .find_map(|n| n.parse::<f64>().ok())
        .unwrap_or(f64::NAN)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = parse_args();
    let server = RedisServer::start().expect("redis-server");
    let mut conn = redis::Client::open(server.url())
        .expect("url")
        .get_multiplexed_async_connection_with_config(&no_timeout())
        .await
        .expect("connect");
    let payloads: &'static [Vec<Vec<u8>>] = Box::leak(generate(args.events).into_boxed_slice());
    let decoded: Vec<Vec<AnchorInfo<'static>>> = payloads
        .iter()
        .map(|p| {
            p.iter()
                .map(|b| decode(b).expect("valid").into_owned())
                .collect()
        })
        .collect();
    let total: usize = payloads.iter().map(Vec::len).sum();
    let ids: usize = decoded.iter().flatten().map(|e| e.ids.len()).sum();

    // Decode alone, for the CPU budget.
    let mut decode_ns = Vec::new();
    for _ in 0..args.runs {
        let start = Instant::now();
        let mut n = 0usize;
        for p in payloads.iter().flatten() {
            n += decode(p).map(|e| e.ids.len()).unwrap_or(0);
        }
        assert_eq!(n, ids);
        decode_ns.push(start.elapsed().as_nanos() as f64 / total as f64);
    }

    let mut lpush = Vec::new();
    let mut hincrby = Vec::new();
    let mut upstream = Vec::new();
    let mut ours = Vec::new();
    for run in 0..args.runs {
        flush(&mut conn).await;
        lpush.push(redis_benchmark(server.port(), &["-t", "lpush"]));
        flush(&mut conn).await;
        hincrby.push(redis_benchmark(
            server.port(),
            &["HINCRBY", "h:__rand_int__", "f", "1"],
        ));
        upstream.push(run_upstream(&server, &decoded, &mut conn).await);
        if args.stats {
            print_command_stats("upstream replay", &mut conn).await;
        }
        ours.push(run_sink(&server, payloads, &mut conn).await);
        if args.stats {
            print_command_stats("streamjob sink", &mut conn).await;
        }
        eprintln!(
            "run {}: upstream replay {:.0} ev/s, streamjob sink {:.0} ev/s",
            run + 1,
            upstream[run].events_per_sec,
            ours[run].events_per_sec,
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let pick = |v: &[Measure], f: fn(&Measure) -> f64| median(v.iter().map(f).collect());
    let up_eps = pick(&upstream, |m| m.events_per_sec);
    let ratios = |runs: &[Measure]| -> Vec<f64> {
        runs.iter()
            .zip(&upstream)
            .map(|(o, u)| o.events_per_sec / u.events_per_sec)
            .collect()
    };
    println!(
        "events: {total} in {PARTITIONS} partitions ({:.2} ids/event), batches of {BATCH_EVENTS}, runs: {}",
        ids as f64 / total as f64,
        args.runs
    );
    println!(
        "redis-benchmark -P 64: LPUSH {:.0} req/s, HINCRBY {:.0} req/s",
        median(lpush),
        median(hincrby)
    );
    println!();
    println!(
        "| path | events/s | Redis commands/event | Redis CPU µs/event | worker CPU µs/event |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| upstream stream, fully pipelined | {:.0} | {:.2} | {:.2} | – |",
        up_eps,
        pick(&upstream, |m| m.commands_per_event),
        pick(&upstream, |m| m.redis_cpu_us_per_event),
    );
    let cpu_ratios = |runs: &[Measure]| -> Vec<f64> {
        runs.iter()
            .zip(&upstream)
            .map(|(o, u)| o.redis_cpu_us_per_event / u.redis_cpu_us_per_event)
            .collect()
    };
    println!(
        "| streamjob RedisSink::apply | {:.0} | {:.2} | {:.2} | {:.2} |",
        pick(&ours, |m| m.events_per_sec),
        pick(&ours, |m| m.commands_per_event),
        pick(&ours, |m| m.redis_cpu_us_per_event),
        pick(&ours, |m| m.client_cpu_us_per_event),
    );
    println!();
    println!(
        "speed-up (median of per-run ratios): {:.2}x; per-run: {:?}; decode alone: {:.0} ns/event",
        median(ratios(&ours)),
        ratios(&ours)
            .iter()
            .map(|r| (r * 100.0).round() / 100.0)
            .collect::<Vec<_>>(),
        median(decode_ns)
    );
    println!(
        "Redis CPU per event relative to the replay's (median of per-run ratios): {:.2}",
        median(cpu_ratios(&ours)),
    );
}
