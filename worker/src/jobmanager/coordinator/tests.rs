use super::*;
use proptest::prelude::*;

fn config() -> CoordinatorConfig {
    CoordinatorConfig {
        heartbeat_interval: Duration::from_secs(1),
        heartbeat_timeout: Duration::from_secs(5),
        revoke_timeout: Duration::from_secs(5),
        startup_grace: Duration::from_secs(2),
        snapshot_timeout: Duration::from_secs(10),
        assign_timeout: Duration::from_secs(5),
        hold_back: Duration::from_secs(30),
    }
}

/// A taskmanager as the protocol sees it: what it holds, what it released since its last report.
#[derive(Debug, Default, Clone)]
struct Tm {
    held: BTreeMap<i32, u64>,
    released: Vec<ReleasedPartition>,
    seq: u64,
    desired_version: u64,
    snapshot_ack: Option<u64>,
    offset: i64,
    /// The high watermark this member last fetched (None: not fetched yet).
    high_watermark: Option<i64>,
    /// Event-time watermarks it reports per partition, the partitions it reports idle, and the
    /// job watermark it acknowledges.
    event_marks: BTreeMap<i32, i64>,
    idle: std::collections::BTreeSet<i32>,
    watermark_ack: Option<i64>,
}

impl Tm {
    fn report(&mut self) -> HeartbeatRequest {
        self.seq += 1;
        HeartbeatRequest {
            seq: self.seq,
            desired_version: self.desired_version,
            owned: self
                .held
                .iter()
                .map(|(p, g)| OwnedPartition {
                    partition: *p,
                    generation: *g,
                })
                .collect(),
            progress: self
                .held
                .keys()
                .map(|p| PartitionProgress {
                    partition: *p,
                    committed_offset: Some(self.offset),
                    high_watermark: self.high_watermark,
                    watermark_ms: self.event_marks.get(p).copied(),
                    idle: self.idle.contains(p),
                    ..Default::default()
                })
                .collect(),
            released: std::mem::take(&mut self.released),
            snapshot_ack: self.snapshot_ack,
            wait: true,
            watermark_ack_ms: self.watermark_ack,
            load: None,
            redis: None,
        }
    }

    fn apply(&mut self, response: &HeartbeatResponse) {
        self.desired_version = response.desired_version;
        let desired: BTreeMap<i32, u64> = response
            .assignments
            .iter()
            .map(|a| (a.partition, a.generation))
            .collect();
        let held: Vec<(i32, u64)> = self.held.iter().map(|(p, g)| (*p, *g)).collect();
        for (p, g) in held {
            if desired.get(&p) != Some(&g) {
                self.held.remove(&p);
                self.released.push(ReleasedPartition {
                    partition: p,
                    generation: g,
                    committed_offset: Some(self.offset),
                });
            }
        }
        for (p, g) in desired {
            self.held.insert(p, g);
        }
        if let Some(id) = response.snapshot_request {
            self.snapshot_ack = Some(id);
        }
    }
}

struct Sim {
    c: Coordinator,
    now: Instant,
    tms: BTreeMap<String, Tm>,
}

impl Sim {
    fn new(partitions: u32) -> Self {
        let now = Instant::now();
        let mut c = Coordinator::new(config(), now, BTreeMap::new(), 0);
        c.set_partition_count(partitions, now);
        Self {
            c,
            now,
            tms: BTreeMap::new(),
        }
    }

    fn advance(&mut self, d: Duration) -> Vec<SnapshotOutcome> {
        self.now += d;
        self.c.tick(self.now)
    }

    fn join(&mut self, id: &str) {
        let tm = self.tms.entry(id.to_string()).or_default();
        let request = RegisterRequest {
            address: None,
            owned: tm
                .held
                .iter()
                .map(|(p, g)| OwnedPartition {
                    partition: *p,
                    generation: *g,
                })
                .collect(),
            progress: Vec::new(),
            revision: None,
        };
        self.c.register(id, &request, self.now);
        tm.desired_version = 0;
    }

    /// One heartbeat round trip; returns whether the answer was immediate.
    fn beat(&mut self, id: &str) -> bool {
        let tm = self.tms.get_mut(id).expect("known tm");
        let request = tm.report();
        let immediate = self
            .c
            .heartbeat(id, &request, self.now)
            .expect("registered");
        let response = self.c.response(id, self.now).expect("registered");
        tm.apply(&response);
        immediate
    }

    fn beat_all(&mut self, rounds: usize) {
        for _ in 0..rounds {
            let ids: Vec<String> = self.tms.keys().cloned().collect();
            for id in ids {
                self.beat(&id);
            }
        }
    }

    fn held(&self, id: &str) -> Vec<i32> {
        self.tms[id].held.keys().copied().collect()
    }

    fn assert_disjoint(&self) {
        let mut seen = BTreeMap::new();
        for (id, tm) in &self.tms {
            for p in tm.held.keys() {
                if let Some(other) = seen.insert(*p, id.clone()) {
                    panic!("partition {p} held by {other} and {id}");
                }
            }
        }
    }
}

#[test]
fn nothing_is_assigned_during_the_startup_grace_then_spread_evenly() {
    let mut sim = Sim::new(6);
    sim.join("a");
    sim.join("b");
    sim.beat_all(1);
    assert!(sim.held("a").is_empty() && sim.held("b").is_empty());
    assert_eq!(sim.c.state(), JobState::Initializing);
    sim.advance(Duration::from_secs(3));
    assert_eq!(sim.c.state(), JobState::Running);
    sim.beat_all(2);
    assert_eq!(sim.held("a").len(), 3);
    assert_eq!(sim.held("b").len(), 3);
    sim.assert_disjoint();
}

#[test]
fn a_joiner_gets_partitions_only_after_their_owner_released_them() {
    let mut sim = Sim::new(4);
    sim.join("a");
    sim.advance(Duration::from_secs(3));
    sim.beat_all(2);
    assert_eq!(sim.held("a"), vec![0, 1, 2, 3]);
    sim.join("b");
    // b asks first: nothing for it yet, a still holds everything; b is told two are coming.
    sim.beat("b");
    assert!(sim.held("b").is_empty());
    let response = sim.c.response("b", sim.now).expect("registered");
    assert_eq!(response.awaiting, 2, "b's share is still being freed");
    let overview: Vec<PartitionState> = sim.c.partitions().iter().map(|p| p.state).collect();
    assert_eq!(
        overview
            .iter()
            .filter(|s| **s == PartitionState::Revoking)
            .count(),
        2
    );
    // a's answer revokes two; its next report releases them; then b gets them.
    assert!(sim.beat("a"), "a has something to do: answered at once");
    assert_eq!(sim.held("a").len(), 2);
    sim.assert_disjoint();
    sim.beat("a");
    assert!(sim.beat("b"));
    assert_eq!(sim.held("b").len(), 2);
    sim.assert_disjoint();
    // Released offsets become the new owner's start offsets.
    let response = sim.c.response("b", sim.now).expect("registered");
    assert!(response
        .assignments
        .iter()
        .all(|a| a.start_offset == Some(0)));
    let response = sim.c.response("b", sim.now).expect("registered");
    assert_eq!(response.awaiting, 0, "b has its share");
    // Nothing left to do: the next heartbeat may be held.
    assert!(!sim.beat("b"));
}

#[test]
fn a_silent_member_is_dropped_and_its_partitions_reassigned() {
    let mut sim = Sim::new(4);
    sim.join("a");
    sim.join("b");
    sim.advance(Duration::from_secs(3));
    sim.beat_all(3);
    assert_eq!(sim.held("a").len(), 2);
    for _ in 0..6 {
        sim.advance(Duration::from_secs(1));
        sim.beat("a");
    }
    assert_eq!(sim.c.member_count(), 1);
    sim.beat("a");
    assert_eq!(sim.held("a"), vec![0, 1, 2, 3]);
    // b comes back: unknown now, so it must register again.
    let mut tm = sim.tms["b"].clone();
    let request = tm.report();
    assert_eq!(
        sim.c.heartbeat("b", &request, sim.now),
        Err(CoordinatorError::UnknownMember("b".into()))
    );
}

/// A partition that moves keeps its lag in the overview while its new owner has not fetched a
/// watermark yet (it used to vanish until the next fetch).
#[test]
fn a_moved_partition_keeps_its_lag_until_the_new_owner_knows_better() {
    let mut sim = Sim::new(2);
    sim.join("a");
    sim.advance(Duration::from_secs(3));
    if let Some(a) = sim.tms.get_mut("a") {
        a.offset = 40;
        a.high_watermark = Some(100);
    }
    sim.beat_all(3);
    let lag =
        |sim: &Sim| -> Vec<Option<i64>> { sim.c.partitions().iter().map(|p| p.lag).collect() };
    assert_eq!(lag(&sim), vec![Some(60), Some(60)]);
    // "b" joins, takes a partition and reports it before its first watermark fetch.
    sim.join("b");
    if let Some(b) = sim.tms.get_mut("b") {
        b.offset = 40;
    }
    sim.beat_all(4);
    assert_eq!(sim.held("b").len(), 1, "b took one partition");
    assert_eq!(
        lag(&sim),
        vec![Some(60), Some(60)],
        "{:?}",
        sim.c.partitions()
    );
    // Once it fetched, its figure counts.
    if let Some(b) = sim.tms.get_mut("b") {
        b.high_watermark = Some(130);
    }
    sim.beat_all(1);
    let moved = sim.held("b")[0] as usize;
    assert_eq!(lag(&sim)[moved], Some(90));
}

#[test]
fn a_graceful_leave_frees_partitions_at_once_with_exact_offsets() {
    let mut sim = Sim::new(4);
    sim.join("a");
    sim.join("b");
    sim.advance(Duration::from_secs(3));
    sim.beat_all(3);
    let b_held = sim.held("b");
    let released: Vec<ReleasedPartition> = sim.tms["b"]
        .held
        .iter()
        .map(|(p, g)| ReleasedPartition {
            partition: *p,
            generation: *g,
            committed_offset: Some(42),
        })
        .collect();
    sim.c.leave("b", &released, sim.now).expect("known");
    sim.tms.remove("b");
    sim.beat("a");
    assert_eq!(sim.held("a"), vec![0, 1, 2, 3]);
    for p in b_held {
        assert_eq!(sim.c.offsets().get(&p), Some(&42));
    }
}

#[test]
fn a_restarted_jobmanager_adopts_what_running_members_hold() {
    let mut sim = Sim::new(4);
    sim.join("a");
    sim.join("b");
    sim.advance(Duration::from_secs(3));
    sim.beat_all(3);
    let (a, b) = (sim.held("a"), sim.held("b"));
    let generation = sim.c.generation();
    // New jobmanager process: empty membership.
    sim.c = Coordinator::new(config(), sim.now, BTreeMap::new(), 0);
    sim.c.set_partition_count(4, sim.now);
    sim.join("a");
    sim.join("b");
    sim.advance(Duration::from_secs(3));
    sim.beat_all(2);
    assert_eq!(sim.held("a"), a, "no partition moved");
    assert_eq!(sim.held("b"), b);
    assert_eq!(sim.c.rebalances(), 0);
    assert!(
        sim.c.generation() >= generation,
        "generations never go back"
    );
}

#[test]
fn a_restarted_jobmanager_assigns_above_every_adopted_generation_and_fence_epoch() {
    let mut sim = Sim::new(4);
    sim.join("a");
    sim.join("b");
    sim.advance(Duration::from_secs(3));
    sim.beat_all(3);
    let adopted_max = sim.tms["b"].held.values().copied().max().expect("b holds");
    let kept = sim.tms["a"].held.clone();
    // b crashes with the jobmanager; a restarted one (its checkpoint says generation 1) waits
    // for the fences before assigning b's partitions.
    sim.tms.remove("b");
    sim.c = Coordinator::new(config(), sim.now, BTreeMap::new(), 1);
    sim.c.await_fence_epochs();
    sim.c.set_partition_count(4, sim.now);
    sim.join("a");
    sim.advance(Duration::from_secs(3));
    assert_eq!(sim.c.state(), JobState::Initializing, "fences not read yet");
    // The fences carry epochs of generations nobody reports any more.
    let fence_generation = adopted_max + 10;
    sim.c.seed_fence_epochs((fence_generation << 20) + 3);
    sim.advance(Duration::from_millis(100));
    assert_eq!(sim.c.state(), JobState::Running);
    sim.beat_all(2);
    let a = &sim.tms["a"].held;
    assert_eq!(a.len(), 4);
    let floor = fence_generation.max(adopted_max);
    for (partition, generation) in a {
        if kept.get(partition) == Some(generation) {
            continue; // adopted, not moved
        }
        assert!(
            *generation > floor,
            "partition {partition}: generation {generation} not above {floor}"
        );
    }
    assert!(sim.c.generation() > floor);
}

#[test]
fn more_members_than_partitions_leaves_extras_idle() {
    let mut sim = Sim::new(2);
    for id in ["a", "b", "c"] {
        sim.join(id);
    }
    sim.advance(Duration::from_secs(3));
    sim.beat_all(2);
    let tms = sim.c.taskmanagers(sim.now);
    assert_eq!(tms.iter().filter(|t| t.idle).count(), 1);
    assert_eq!(tms.iter().map(|t| t.partitions.len()).sum::<usize>(), 2);
}

#[test]
fn a_snapshot_waits_for_fresh_reports_from_every_owner() {
    let mut sim = Sim::new(2);
    sim.join("a");
    sim.join("b");
    sim.advance(Duration::from_secs(3));
    sim.beat_all(2);
    sim.tms.get_mut("a").expect("a").offset = 10;
    sim.tms.get_mut("b").expect("b").offset = 20;
    let id = sim.c.request_snapshot(sim.now);
    assert!(sim.advance(Duration::ZERO).is_empty(), "no report yet");
    sim.beat("a"); // answer carries the request
    sim.beat("a"); // fresh report with the ack
    assert!(sim.advance(Duration::ZERO).is_empty(), "b has not answered");
    sim.beat_all(2);
    let outcome = sim.advance(Duration::ZERO);
    let [SnapshotOutcome::Ready(data)] = outcome.as_slice() else {
        panic!("expected one ready snapshot, got {outcome:?}");
    };
    assert_eq!(data.id, id);
    let values: Vec<i64> = data.offsets.values().copied().collect();
    assert_eq!(values.len(), 2);
    assert!(values.contains(&10) && values.contains(&20), "{values:?}");
}

#[test]
fn a_snapshot_times_out_when_an_owner_never_reports() {
    let mut sim = Sim::new(2);
    sim.join("a");
    sim.advance(Duration::from_secs(3));
    sim.beat_all(2);
    sim.c.request_snapshot(sim.now);
    let mut outcomes = Vec::new();
    for _ in 0..12 {
        outcomes.extend(sim.advance(Duration::from_secs(1)));
    }
    // The silent member was dropped at 5 s, which completes the snapshot with what is known.
    assert!(
        matches!(outcomes.as_slice(), [SnapshotOutcome::Ready(_)]),
        "{outcomes:?}"
    );
}

#[test]
fn stop_revokes_everything_and_finishes() {
    let mut sim = Sim::new(3);
    sim.join("a");
    sim.advance(Duration::from_secs(3));
    sim.beat_all(2);
    sim.c.begin_stop(sim.now).expect("running");
    assert!(!sim.c.all_released());
    sim.beat_all(2);
    assert!(sim.held("a").is_empty());
    assert!(sim.c.all_released());
    sim.c.end_stop(true, sim.now);
    assert_eq!(sim.c.state(), JobState::Finished);
    assert_eq!(
        sim.c.begin_stop(sim.now),
        Err(CoordinatorError::NotRunning(JobState::Finished))
    );
    sim.beat_all(2);
    assert!(sim.held("a").is_empty(), "a finished job assigns nothing");
}

#[test]
fn stale_reports_are_ignored() {
    let mut sim = Sim::new(2);
    sim.join("a");
    sim.advance(Duration::from_secs(3));
    sim.beat_all(2);
    let mut stale = sim.tms.get_mut("a").expect("a").report();
    stale.owned.clear();
    stale.seq = 1;
    sim.c.heartbeat("a", &stale, sim.now).expect("known");
    assert_eq!(
        sim.c
            .partitions()
            .iter()
            .filter(|p| p.owner.is_some())
            .count(),
        2
    );
}

#[test]
fn a_reported_rewind_lowers_the_committed_offset_and_is_counted_once() {
    let mut sim = Sim::new(1);
    sim.join("a");
    sim.advance(Duration::from_secs(3));
    sim.tms.get_mut("a").expect("a").offset = 500;
    sim.beat_all(3);
    assert_eq!(sim.c.partitions()[0].committed_offset, Some(500));

    // Redis lost writes: the owner rewound to 200 and says so in every report from now on.
    let mut report = sim.tms.get_mut("a").expect("a").report();
    let rewind = Rewind {
        from_offset: 500,
        to_offset: 200,
        at_ms: 1,
    };
    for p in &mut report.progress {
        p.committed_offset = Some(200);
        p.rewinds = 1;
        p.last_rewind = Some(rewind);
    }
    for _ in 0..2 {
        report.seq += 1;
        sim.c.heartbeat("a", &report, sim.now).expect("known");
    }
    let status = &sim.c.partitions()[0];
    assert_eq!(
        status.committed_offset,
        Some(200),
        "not kept at the old maximum"
    );
    assert_eq!(status.rewinds, 1, "counted once");
    assert_eq!(status.last_rewind, Some(rewind));
}

/// A new owner of a partition that is re-applying what Redis lost must know where the job had
/// been: given only the lowered committed offset, it would decide the rest of the lost range
/// with the job watermark (which never goes back) and count those events as late. Snapshots keep
/// the same offset, for a jobmanager restored from them.
#[test]
fn a_rewound_partition_resumes_from_where_it_had_been_until_the_reapply_is_back_there() {
    let mut sim = Sim::new(1);
    sim.join("a");
    sim.advance(Duration::from_secs(3));
    sim.tms.get_mut("a").expect("a").offset = 500;
    sim.beat_all(3);
    let mut report = sim.tms.get_mut("a").expect("a").report();
    for p in &mut report.progress {
        p.committed_offset = Some(200);
        p.rewinds = 1;
        p.last_rewind = Some(Rewind {
            from_offset: 500,
            to_offset: 200,
            at_ms: 1,
        });
    }
    sim.c.heartbeat("a", &report, sim.now).expect("known");
    assert_eq!(sim.c.partitions()[0].committed_offset, Some(200), "shown");
    assert_eq!(sim.c.resume_offset(0), Some(500));
    assert_eq!(sim.c.current_snapshot().offsets.get(&0), Some(&500));

    // a dies half-way through the re-apply; b takes the partition over.
    sim.tms.remove("a");
    sim.advance(Duration::from_secs(6));
    sim.join("b");
    sim.tms.get_mut("b").expect("b").offset = 350;
    sim.advance(Duration::from_secs(1));
    sim.beat("b");
    let answer = sim.c.response("b", sim.now).expect("registered");
    let starts: Vec<Option<i64>> = answer.assignments.iter().map(|a| a.start_offset).collect();
    assert_eq!(starts, vec![Some(500)], "not the 200 a reported last");
    sim.beat_all(2);
    assert_eq!(sim.held("b"), vec![0]);
    assert_eq!(sim.c.resume_offset(0), Some(500), "b is at 350");
    // Back where the job had been: from now on the committed offset is all there is.
    sim.tms.get_mut("b").expect("b").offset = 520;
    sim.beat_all(1);
    assert_eq!(sim.c.resume_offset(0), Some(520));
    assert_eq!(sim.c.current_snapshot().offsets.get(&0), Some(&520));
}

#[derive(Debug, Clone)]
enum Event {
    Join,
    Beat(usize),
    Leave(usize),
    Crash(usize),
    Time(u64),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        1 => Just(Event::Join),
        6 => (0usize..8).prop_map(Event::Beat),
        1 => (0usize..8).prop_map(Event::Leave),
        1 => (0usize..8).prop_map(Event::Crash),
        2 => (0u64..3000).prop_map(Event::Time),
    ]
}

proptest! {
    /// Live taskmanagers that follow the protocol never hold the same partition at once, and
    /// once the dust settles every partition is held, evenly.
    #[test]
    fn live_members_never_share_a_partition(partitions in 1u32..12, events in proptest::collection::vec(event(), 1..60)) {
        let mut sim = Sim::new(partitions);
        sim.join("tm-0");
        let mut next = 1;
        for e in events {
            let ids: Vec<String> = sim.tms.keys().cloned().collect();
            match e {
                Event::Join => { let id = format!("tm-{next}"); next += 1; sim.join(&id); }
                Event::Beat(i) if !ids.is_empty() => { sim.beat(&ids[i % ids.len()]); }
                Event::Leave(i) if !ids.is_empty() => {
                    let id = &ids[i % ids.len()];
                    let mut tm = sim.tms.remove(id).expect("listed");
                    let mut released = std::mem::take(&mut tm.released);
                    released.extend(tm.held.iter().map(|(p, g)| ReleasedPartition { partition: *p, generation: *g, committed_offset: None }));
                    sim.c.leave(id, &released, sim.now).expect("registered");
                }
                Event::Crash(i) if !ids.is_empty() => { sim.tms.remove(&ids[i % ids.len()]); }
                Event::Time(ms) => {
                    // Live members keep heartbeating while time passes.
                    let mut left = ms;
                    while left > 0 {
                        let step = left.min(900);
                        left -= step;
                        sim.advance(Duration::from_millis(step));
                        sim.beat_all(1);
                        sim.assert_disjoint();
                    }
                }
                _ => {}
            }
            sim.assert_disjoint();
        }
        for _ in 0..10 {
            sim.advance(Duration::from_secs(1));
            sim.beat_all(1);
            sim.assert_disjoint();
        }
        if !sim.tms.is_empty() {
            let loads: Vec<usize> = sim.tms.values().map(|t| t.held.len()).collect();
            prop_assert_eq!(loads.iter().sum::<usize>() as u32, partitions);
            let (min, max) = (loads.iter().min().copied().unwrap_or(0), loads.iter().max().copied().unwrap_or(0));
            prop_assert!(max - min <= 1, "uneven {:?}", loads);
        }
    }
}

/// The job's event-time watermark: the minimum over partitions that are not idle, never lower
/// than before (a lower report, a partition moving to an owner that has not reported yet, a seed
/// from an older snapshot), and recorded as final only up to what every taskmanager acknowledged.
#[test]
fn the_job_watermark_is_the_minimum_of_active_partitions_never_goes_back_and_is_final_once_acknowledged(
) {
    let mut sim = Sim::new(2);
    sim.join("a");
    sim.advance(Duration::from_secs(3));
    let set = |sim: &mut Sim, id: &str, f: &dyn Fn(&mut Tm)| {
        if let Some(t) = sim.tms.get_mut(id) {
            f(t);
        }
    };
    set(&mut sim, "a", &|t| {
        t.event_marks = BTreeMap::from([(0, 1_000), (1, 5_000)]);
    });
    sim.beat_all(3);
    assert_eq!(
        sim.c.watermarks(),
        (Some(1_000), None),
        "nothing acknowledged"
    );
    // Partition 0 goes idle: it no longer holds the job back.
    set(&mut sim, "a", &|t| {
        t.idle.insert(0);
    });
    sim.beat_all(1);
    assert_eq!(sim.c.watermarks().0, Some(5_000));
    // It wakes up behind: the job watermark does not go back.
    set(&mut sim, "a", &|t| {
        t.idle.clear();
        t.event_marks.insert(0, 2_000);
    });
    sim.beat_all(1);
    assert_eq!(sim.c.watermarks().0, Some(5_000));
    // Final: what the taskmanager acknowledged, at most the job watermark.
    set(&mut sim, "a", &|t| t.watermark_ack = Some(4_000));
    sim.beat_all(1);
    assert_eq!(sim.c.watermarks(), (Some(5_000), Some(4_000)));
    set(&mut sim, "a", &|t| t.watermark_ack = Some(9_000));
    sim.beat_all(1);
    assert_eq!(sim.c.watermarks(), (Some(5_000), Some(5_000)));
    // Rescale: "b" takes a partition and reports it without a watermark yet, acknowledging
    // nothing: the job watermark holds, and nothing more becomes final.
    sim.join("b");
    sim.beat_all(4);
    assert_eq!(sim.held("b").len(), 1, "b took one partition");
    set(&mut sim, "a", &|t| {
        t.event_marks = BTreeMap::from([(0, 8_000), (1, 8_000)]);
    });
    sim.beat_all(2);
    assert_eq!(sim.c.watermarks(), (Some(5_000), Some(5_000)));
    // Restores never lower it; a later snapshot or Redis's final record raises it.
    sim.c.seed_watermark(Some(100), Some(50));
    assert_eq!(sim.c.watermarks(), (Some(5_000), Some(5_000)));
    sim.c.seed_watermark(Some(7_000), Some(6_000));
    assert_eq!(sim.c.watermarks(), (Some(7_000), Some(6_000)));
}

#[test]
fn the_autoscaler_sees_each_members_newest_load_and_every_partitions_offsets() {
    let mut sim = Sim::new(3);
    sim.join("a");
    sim.join("b");
    sim.advance(Duration::from_secs(3));
    sim.beat_all(3);
    let load = TaskManagerLoad {
        elapsed_ms: 10_000,
        busy_ms: 2_500,
        processed_events: 900,
        redis_applies: 30,
        redis_retries: 1,
        redis_apply_p99_ms: 4.5,
    };
    let tm = sim.tms.get_mut("a").expect("a");
    tm.offset = 40;
    tm.high_watermark = Some(70);
    let mut request = tm.report();
    request.load = Some(load);
    sim.c.heartbeat("a", &request, sim.now).expect("registered");
    // A report without load (an older taskmanager) keeps what is known.
    let request = sim.tms.get_mut("a").expect("a").report();
    sim.c.heartbeat("a", &request, sim.now).expect("registered");
    let loads = sim.c.taskmanager_loads();
    assert_eq!(
        loads,
        vec![
            TaskManagerMetrics {
                id: "a".into(),
                load: Some(load)
            },
            TaskManagerMetrics {
                id: "b".into(),
                load: None
            },
        ]
    );
    let offsets = sim.c.partition_offsets();
    assert_eq!(offsets.len(), 3);
    for p in sim.held("a") {
        assert_eq!(
            offsets[p as usize],
            PartitionOffsets {
                partition: p,
                high_watermark: Some(70),
                committed_offset: Some(40)
            }
        );
    }
}

/// A member that registers and heartbeats but never takes what it is given.
fn beat_without_taking(sim: &mut Sim, id: &str, seq: &mut u64) -> HeartbeatResponse {
    *seq += 1;
    let request = HeartbeatRequest {
        seq: *seq,
        wait: true,
        ..HeartbeatRequest::default()
    };
    sim.c.heartbeat(id, &request, sim.now).expect("registered");
    sim.c.response(id, sim.now).expect("registered")
}

#[test]
fn an_assignment_never_confirmed_is_taken_back_and_its_member_held_back() {
    let mut sim = Sim::new(4);
    sim.join("a");
    sim.join("b");
    sim.advance(Duration::from_secs(3));
    sim.beat_all(3);
    let before: BTreeMap<String, Vec<i32>> = ["a", "b"]
        .iter()
        .map(|id| (id.to_string(), sim.held(id)))
        .collect();
    sim.c.register("c", &RegisterRequest::default(), sim.now);
    let mut seq = 0;
    // c is given partitions (revoked from a and b), then never confirms them.
    let mut given = false;
    for _ in 0..8 {
        sim.advance(Duration::from_secs(1));
        sim.beat_all(1);
        let response = beat_without_taking(&mut sim, "c", &mut seq);
        given |= !response.assignments.is_empty();
        assert!(response.held_back.is_none() || given);
    }
    assert!(given, "c was given partitions");
    assert!(
        sim.c.taken_back() > 0,
        "taken back after the assign timeout"
    );
    // Held back: a and b hold everything again, c gets nothing, and everyone can see why.
    for _ in 0..20 {
        sim.advance(Duration::from_secs(1));
        sim.beat_all(1);
        let response = beat_without_taking(&mut sim, "c", &mut seq);
        assert!(
            response.assignments.is_empty(),
            "nothing for c while held back"
        );
        assert!(response.held_back.is_some());
    }
    let mut held: Vec<i32> = sim.held("a");
    held.extend(sim.held("b"));
    held.sort_unstable();
    assert_eq!(
        held,
        vec![0, 1, 2, 3],
        "the others keep everything: {before:?}"
    );
    sim.assert_disjoint();
    let info = sim.c.taskmanagers(sim.now);
    let c = info.iter().find(|t| t.id == "c").expect("c registered");
    assert!(
        c.held_back
            .as_deref()
            .is_some_and(|r| r.contains("did not take")),
        "{c:?}"
    );
    assert!(!c.idle, "held back is not idle");
    // After the back-off it may take partitions again.
    let mut again = false;
    for _ in 0..15 {
        sim.advance(Duration::from_secs(1));
        sim.beat_all(1);
        again |= !beat_without_taking(&mut sim, "c", &mut seq)
            .assignments
            .is_empty();
    }
    assert!(
        again,
        "c is given partitions again once its back-off is over"
    );
}

/// A member that heartbeats what it read of Redis at `read_at_ms`, with `migrating` slots.
fn beat_with_topology(sim: &mut Sim, id: &str, seq: u64, read_at_ms: u64, migrating: u32) {
    let request = HeartbeatRequest {
        seq,
        redis: Some(crate::api::RedisTopology {
            mode: crate::api::RedisMode::Cluster,
            shards: 3,
            primaries: vec!["a:1".into(), "b:1".into(), "c:1".into()],
            migrating_slots: migrating,
            last_refresh_ms: read_at_ms,
        }),
        ..HeartbeatRequest::default()
    };
    sim.c.heartbeat(id, &request, sim.now).expect("registered");
}

#[test]
fn the_overview_shows_the_freshest_redis_topology_any_member_read() {
    let mut sim = Sim::new(4);
    sim.join("a");
    sim.join("b");
    assert_eq!(sim.c.redis_topology(), None, "nobody read Redis yet");
    beat_with_topology(&mut sim, "a", 100, 5_000, 2);
    beat_with_topology(&mut sim, "b", 100, 4_000, 7);
    let shown = sim.c.redis_topology().expect("reported");
    assert_eq!((shown.last_refresh_ms, shown.migrating_slots), (5_000, 2));
    // A heartbeat without a topology (none read yet) keeps what the member reported before.
    let request = HeartbeatRequest {
        seq: 101,
        ..HeartbeatRequest::default()
    };
    sim.c.heartbeat("a", &request, sim.now).expect("registered");
    beat_with_topology(&mut sim, "b", 102, 6_000, 0);
    let shown = sim.c.redis_topology().expect("reported");
    assert_eq!((shown.last_refresh_ms, shown.migrating_slots), (6_000, 0));
}
