//! Benchmark of the distributed job (scripts/bench-jobmanager.sh): one jobmanager and
//! taskmanagers as real `streamjob-worker` processes, a real redis-server, librdkafka's mock
//! cluster as the broker.
//!
//! 1. Rescale gap: under steady load, a taskmanager joins or leaves (SIGTERM) repeatedly. The
//!    fences of all partitions are sampled every 2 ms; a rescale's gap is the longest time any
//!    partition's fence stood still between the change and one second after the new assignment
//!    was in place (last event applied before → first after). Reference, same run: the longest
//!    stall of any partition in equally long windows without a rescale.
//! 2. Savepoint duration under the same load (trigger → file written).
//! 3. Checkpoint overhead: events/s applying a pre-produced data set (first applied event → last)
//!    with `checkpoint.interval` 1 s vs off, alternating runs, medians.
//! 4. `--rolling N` (alone; issue #26): N rounds of a rolling upgrade of 4 taskmanagers (8
//!    partitions) under steady load, played as a Deployment with `maxSurge 1`, `maxUnavailable 0`
//!    (start a new-template taskmanager, wait for its `/readyz`, SIGTERM one old one, wait for its
//!    exit; 4 times), then, in the same run, the savepoint upgrade for contrast (stop-with-savepoint,
//!    every process gone, a new jobmanager `--from-savepoint` and 4 new taskmanagers; process
//!    start only, no pod scheduling or image pull). From the 2 ms fence samples: every stall of
//!    every partition (time between two fence advances) and each partition's longest stall, the
//!    longest time the whole job applied nothing, and events/s before, during and after.

#[path = "../tests/jobmanager_support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use streamjob_worker::demo::{EventGenerator, TrafficShape};
use support::{data_set, Cluster, JOB, TOPIC};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// Produces at `rate` events/s until `stop`.
fn steady_producer(
    bootstrap: String,
    partitions: i32,
    rate: u64,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("linger.ms", "2")
            .set("queue.buffering.max.messages", "1000000")
            .create()
            .expect("producer");
        let mut generator = EventGenerator::new(99, TrafficShape::default());
        let started = Instant::now();
        let mut sent = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
            while sent < due {
                let payload = generator.next_payload();
                let partition = (sent % partitions as u64) as i32;
                let record: BaseRecord<'_, (), [u8]> = BaseRecord::to(TOPIC)
                    .payload(payload.as_slice())
                    .partition(partition);
                if producer.send(record).is_err() {
                    producer.poll(Duration::from_millis(5));
                    continue;
                }
                sent += 1;
            }
            producer.poll(Duration::from_millis(1));
        }
        let _ = producer.flush(Duration::from_secs(10));
        sent
    })
}

/// Samples every partition's fence every 2 ms: (time, fences).
type Samples = Arc<Mutex<Vec<(Instant, Vec<i64>)>>>;

fn fence_sampler(
    url: String,
    partitions: i32,
    stop: Arc<AtomicBool>,
) -> (Samples, std::thread::JoinHandle<()>) {
    let samples: Samples = Arc::default();
    let out = samples.clone();
    let handle = std::thread::spawn(move || {
        let client = redis::Client::open(url).expect("redis url");
        let mut conn = client.get_connection().expect("redis connection");
        while !stop.load(Ordering::Relaxed) {
            let mut pipe = redis::pipe();
            for p in 0..partitions {
                pipe.hget(format!("streamjob:{JOB}:fence:{TOPIC}:{p}"), "next_offset");
            }
            let fences: Vec<Option<i64>> = pipe.query(&mut conn).unwrap_or_default();
            let fences = fences.into_iter().map(|f| f.unwrap_or(0)).collect();
            out.lock().expect("samples").push((Instant::now(), fences));
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    (samples, handle)
}

/// Longest time any partition's fence stood still within [from, to].
fn longest_stall(samples: &[(Instant, Vec<i64>)], from: Instant, to: Instant) -> f64 {
    let window: Vec<&(Instant, Vec<i64>)> = samples
        .iter()
        .filter(|(t, _)| *t >= from && *t <= to)
        .collect();
    let Some(first) = window.first() else {
        return f64::NAN;
    };
    let partitions = first.1.len();
    let mut worst = 0.0f64;
    for p in 0..partitions {
        let mut last_change = first.0;
        let mut last_value = first.1[p];
        for (t, fences) in &window {
            if fences[p] != last_value {
                worst = worst.max(t.duration_since(last_change).as_secs_f64());
                last_change = *t;
                last_value = fences[p];
            }
        }
        worst = worst.max(
            to.min(window.last().map(|w| w.0).unwrap_or(to))
                .duration_since(last_change)
                .as_secs_f64(),
        );
    }
    worst
}

async fn rescale_and_savepoints(rescales: usize, savepoints: usize, rate: u64) {
    let mut c = Cluster::start_with(6, "1s", 1000);
    c.start_jobmanager(&[]);
    c.start_taskmanager("tm-1");
    c.start_taskmanager("tm-2");
    let stop = Arc::new(AtomicBool::new(false));
    let producer = steady_producer(
        c.kafka.bootstrap_servers().to_string(),
        c.partitions,
        rate,
        stop.clone(),
    );
    c.wait_balanced(&["tm-1", "tm-2"], Duration::from_secs(60))
        .await;
    let (samples, sampler) = fence_sampler(c.redis.url(), c.partitions, stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut windows = Vec::new();
    let mut quiet = Vec::new();
    for i in 0..rescales {
        // A quiet window of the same length first: the reference.
        let q0 = Instant::now();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        quiet.push((q0, Instant::now()));
        let t0 = Instant::now();
        if i % 2 == 0 {
            c.start_taskmanager("tm-3");
            c.wait_balanced(&["tm-1", "tm-2", "tm-3"], Duration::from_secs(60))
                .await;
        } else {
            c.stop_taskmanager("tm-3");
            c.wait_balanced(&["tm-1", "tm-2"], Duration::from_secs(60))
                .await;
        }
        let balanced = Instant::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        windows.push((t0, balanced + Duration::from_secs(1)));
    }

    let mut durations = Vec::new();
    for _ in 0..savepoints {
        let op = c.trigger(&format!("/jobs/{JOB}/savepoints"), "").await;
        if let Some(done) = op.completed_at_ms {
            durations.push((done - op.triggered_at_ms) as f64);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let sent = producer.join().expect("producer");
    sampler.join().expect("sampler");
    let samples = samples.lock().expect("samples").clone();
    let gaps = sorted(
        windows
            .iter()
            .map(|(a, b)| longest_stall(&samples, *a, *b) * 1000.0)
            .collect(),
    );
    let reference = sorted(
        quiet
            .iter()
            .map(|(a, b)| longest_stall(&samples, *a, *b) * 1000.0)
            .collect(),
    );
    println!("## rescale gap ({rescales} rescales 2<->3 taskmanagers, 6 partitions, {rate} events/s, {sent} events)");
    println!(
        "rescale gap ms: p50 {:.0}  p99 {:.0}  max {:.0}  all {:?}",
        percentile(&gaps, 50.0),
        percentile(&gaps, 99.0),
        gaps.last().copied().unwrap_or(f64::NAN),
        gaps.iter().map(|g| g.round()).collect::<Vec<_>>()
    );
    println!(
        "reference (no rescale) longest stall ms: p50 {:.0}  p99 {:.0}",
        percentile(&reference, 50.0),
        percentile(&reference, 99.0)
    );
    let durations = sorted(durations);
    println!(
        "## savepoint duration under load ({} savepoints)",
        durations.len()
    );
    println!(
        "savepoint ms: p50 {:.0}  max {:.0}",
        percentile(&durations, 50.0),
        durations.last().copied().unwrap_or(f64::NAN)
    );
    c.stop_all();
}

/// Seconds from the first applied event to the last of `events` pre-produced events (start-up of
/// the processes excluded) with the given checkpoint interval.
async fn time_to_apply(events: usize, interval: &str) -> f64 {
    let payloads = data_set(5, events);
    let mut c = Cluster::start_with(4, interval, 1000);
    c.produce_in_background(payloads).join().expect("producer");
    c.start_jobmanager(&[]);
    c.start_taskmanager("tm-1");
    c.start_taskmanager("tm-2");
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first = None;
    loop {
        let applied = c.applied();
        if applied > 0 && first.is_none() {
            first = Some(Instant::now());
        }
        if applied >= events as i64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not applied in time:\n{}",
            c.log_tails()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let seconds = first.map(|f| f.elapsed().as_secs_f64()).unwrap_or(f64::NAN);
    c.stop_all();
    seconds
}

/// Stalls within [from, to] from the fence samples: every interval between two advances of any
/// partition's fence (seconds), each partition's longest, and the whole job's longest (no
/// partition advanced).
struct Stalls {
    all: Vec<f64>,
    per_partition: Vec<f64>,
    whole_job: f64,
    events_per_second: f64,
}

fn stalls(samples: &[(Instant, Vec<i64>)], from: Instant, to: Instant) -> Stalls {
    let window: Vec<&(Instant, Vec<i64>)> = samples
        .iter()
        .filter(|(t, _)| *t >= from && *t <= to)
        .collect();
    let (Some(first), Some(last)) = (window.first(), window.last()) else {
        return Stalls {
            all: Vec::new(),
            per_partition: Vec::new(),
            whole_job: f64::NAN,
            events_per_second: f64::NAN,
        };
    };
    let mut all = Vec::new();
    let mut per_partition = Vec::new();
    for p in 0..first.1.len() {
        let (mut since, mut value, mut worst) = (first.0, first.1[p], 0.0f64);
        for (t, fences) in &window {
            if fences[p] != value {
                let stall = t.duration_since(since).as_secs_f64();
                all.push(stall);
                worst = worst.max(stall);
                (since, value) = (*t, fences[p]);
            }
        }
        let open = last.0.duration_since(since).as_secs_f64();
        all.push(open);
        per_partition.push(worst.max(open));
    }
    let (mut since, mut total, mut whole_job) = (first.0, first.1.iter().sum::<i64>(), 0.0f64);
    for (t, fences) in &window {
        let sum: i64 = fences.iter().sum();
        if sum != total {
            whole_job = whole_job.max(t.duration_since(since).as_secs_f64());
            (since, total) = (*t, sum);
        }
    }
    whole_job = whole_job.max(last.0.duration_since(since).as_secs_f64());
    let applied = last.1.iter().sum::<i64>() - first.1.iter().sum::<i64>();
    let seconds = last.0.duration_since(first.0).as_secs_f64();
    Stalls {
        all: sorted(all),
        per_partition: sorted(per_partition),
        whole_job,
        events_per_second: applied as f64 / seconds,
    }
}

fn print_stalls(what: &str, s: &Stalls) {
    let ms = |v: f64| (v * 1000.0).round();
    println!(
        "{what}: stalls ms p50 {} p99 {} max {} ({} stalls) | per-partition longest ms p50 {} p99 {} max {} | whole job longest ms {} | events/s {:.0}",
        ms(percentile(&s.all, 50.0)),
        ms(percentile(&s.all, 99.0)),
        ms(s.all.last().copied().unwrap_or(f64::NAN)),
        s.all.len(),
        ms(percentile(&s.per_partition, 50.0)),
        ms(percentile(&s.per_partition, 99.0)),
        ms(s.per_partition.last().copied().unwrap_or(f64::NAN)),
        ms(s.whole_job),
        s.events_per_second
    );
}

/// One rolling upgrade of 4 taskmanagers (old-* → new-*, or back) as a Deployment with
/// `maxSurge 1`, `maxUnavailable 0`; returns the time each step took.
async fn roll(c: &mut Cluster, from: &[String], to: &[String], edit: (&str, &str)) -> Vec<f64> {
    let mut steps = Vec::new();
    for (old, new) in from.iter().zip(to) {
        let t0 = Instant::now();
        let url = c.start_taskmanager_with(new, &[edit]);
        c.wait_ready(&url, Duration::from_secs(60)).await;
        c.stop_taskmanager(old);
        steps.push(t0.elapsed().as_secs_f64());
    }
    let ids: Vec<&str> = to.iter().map(String::as_str).collect();
    c.wait_balanced(&ids, Duration::from_secs(60)).await;
    steps
}

/// Stop-with-savepoint, every process gone, a new jobmanager from the savepoint and 4 new
/// taskmanagers (process start only: no pod scheduling, no image pull).
async fn savepoint_upgrade(c: &mut Cluster, from: &[String], to: &[String]) {
    let op = c.trigger(&format!("/jobs/{JOB}/stop"), "{}").await;
    let location = op.location.expect("savepoint written");
    for old in from {
        c.stop_taskmanager(old);
    }
    c.kill_jobmanager();
    c.start_jobmanager(&["--from-savepoint", &location]);
    for new in to {
        c.start_taskmanager(new);
    }
    let ids: Vec<&str> = to.iter().map(String::as_str).collect();
    c.wait_balanced(&ids, Duration::from_secs(60)).await;
}

async fn rolling(rounds: usize, rate: u64) {
    let mut c = Cluster::start_with(8, "1s", 500);
    c.start_jobmanager(&[]);
    let names =
        |prefix: &str| -> Vec<String> { (1..=4).map(|i| format!("{prefix}-{i}")).collect() };
    let mut current = names("r0");
    for id in &current {
        c.start_taskmanager(id);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let producer = steady_producer(
        c.kafka.bootstrap_servers().to_string(),
        c.partitions,
        rate,
        stop.clone(),
    );
    let ids: Vec<&str> = current.iter().map(String::as_str).collect();
    c.wait_balanced(&ids, Duration::from_secs(60)).await;
    let (samples, sampler) = fence_sampler(c.redis.url(), c.partitions, stop.clone());
    let settle = Duration::from_secs(4);
    let mut windows = Vec::new();
    for round in 1..=rounds {
        let next = names(&format!("r{round}"));
        let edit = if round % 2 == 1 {
            ("maxEvents: 500", "maxEvents: 400")
        } else {
            ("linger: 20ms", "linger: 20ms")
        };
        tokio::time::sleep(settle).await;
        let t0 = Instant::now();
        let steps = roll(&mut c, &current, &next, edit).await;
        let t1 = Instant::now();
        println!("rolling round {round}: steps s {steps:.2?}");
        windows.push((t0 - settle, t0, t1, t1 + settle));
        current = next;
    }
    tokio::time::sleep(settle).await;
    let next = names("sp");
    let t0 = Instant::now();
    savepoint_upgrade(&mut c, &current, &next).await;
    let t1 = Instant::now();
    tokio::time::sleep(settle).await;
    stop.store(true, Ordering::Relaxed);
    let sent = producer.join().expect("producer");
    sampler.join().expect("sampler");
    let samples = samples.lock().expect("samples").clone();
    println!("## rolling upgrade: 4 taskmanagers, 8 partitions, {rate} events/s, {rounds} rounds, {sent} events");
    for (i, (before, start, end, after)) in windows.iter().enumerate() {
        println!(
            "round {}: rollout {:.1} s",
            i + 1,
            end.duration_since(*start).as_secs_f64()
        );
        print_stalls("  before ", &stalls(&samples, *before, *start));
        print_stalls("  during ", &stalls(&samples, *start, *end));
        print_stalls("  after  ", &stalls(&samples, *end, *after));
    }
    println!(
        "## savepoint upgrade, same run: {:.1} s until balanced again",
        (t1 - t0).as_secs_f64()
    );
    print_stalls(
        "  during ",
        &stalls(&samples, t0, t1 + Duration::from_secs(1)),
    );
    print_stalls(
        "  after  ",
        &stalls(&samples, t1 + Duration::from_secs(1), t1 + settle),
    );
    c.stop_all();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rolling_rounds = arg("--rolling", 0);
    if rolling_rounds > 0 {
        rolling(rolling_rounds, arg("--rate", 10_000) as u64).await;
        return;
    }
    let rescales = arg("--rescales", 10);
    let savepoints = arg("--savepoints", 10);
    let runs = arg("--runs", 5);
    let events = arg("--events", 300_000);
    let rate = arg("--rate", 6000) as u64;
    if rescales > 0 {
        rescale_and_savepoints(rescales, savepoints, rate).await;
    }

    let (mut on, mut off) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        off.push(events as f64 / time_to_apply(events, "0s").await);
        on.push(events as f64 / time_to_apply(events, "1s").await);
    }
    let (on, off) = (sorted(on), sorted(off));
    let (m_on, m_off) = (percentile(&on, 50.0), percentile(&off, 50.0));
    println!("## checkpoint overhead ({events} pre-produced events, 2 taskmanagers, 4 partitions, {runs} runs each, alternating)");
    println!(
        "events/s with checkpoints off: median {m_off:.0}  all {:?}",
        off.iter().map(|v| v.round()).collect::<Vec<_>>()
    );
    println!(
        "events/s with checkpoint.interval 1s: median {m_on:.0}  all {:?}",
        on.iter().map(|v| v.round()).collect::<Vec<_>>()
    );
    println!("overhead: {:.1}%", (m_off - m_on) / m_off * 100.0);
}
