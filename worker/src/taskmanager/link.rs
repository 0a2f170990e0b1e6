//! The taskmanager's link to the jobmanager: whether it is registered, when the jobmanager last
//! answered, and what that means for readiness (`/readyz`) and for the partitions it holds.
//!
//! # Readiness
//!
//! A taskmanager is ready when it can be counted on to carry its share of the job, so that a
//! Deployment rolling to a new template (`maxSurge 1`, `maxUnavailable 0`) takes an old
//! taskmanager away only once the new one really took over:
//! - it is registered with the jobmanager that answers now;
//! - it holds (claimed in Redis, running) every partition that jobmanager assigned to it, and the
//!   jobmanager is not still freeing partitions for it (`awaiting` in the heartbeat answer: the
//!   planner's share for it minus what it was given, while their old owners flush);
//! - or the job is stopping or finished: nothing to take. While a (re)started jobmanager is
//!   initializing, a member that holds partitions is ready (it keeps them), one that holds
//!   nothing is not (it has taken nothing yet).
//!
//! Never ready: a taskmanager that cannot reach its Redis or broker (it does not even register,
//! so nothing moves to it), and one the jobmanager holds back because it did not take what it
//! was given in time (see `jobmanager::coordinator`). Either way a rolling upgrade stops there
//! and the old taskmanagers keep everything.
//!
//! While no jobmanager answers, within `taskmanager.jobmanagerGrace`, a registered taskmanager
//! stays ready: it keeps processing its partitions (their Redis fences keep every event
//! exactly-once whoever the jobmanager is), and a jobmanager restart must not look like every
//! taskmanager failing at once.
//!
//! # The grace
//!
//! Past the grace the taskmanager releases every partition (flush, stop), forgets the last
//! assignment and keeps trying to register; it is not ready until a jobmanager assigns it
//! partitions again. Why release at all: a jobmanager that comes back after the grace has dropped
//! this member long ago, may have handed its partitions to others, and a taskmanager that keeps
//! consuming with nobody coordinating is invisible to savepoints, lag and rescales. The fence
//! makes the release safe at any moment: whatever was flushed is in Redis with its fence, the
//! rest is re-read by the next owner.

use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::api::JobState;

/// What the taskmanager knows about its jobmanager.
#[derive(Debug, Default, Clone)]
pub(super) struct Link {
    pub registered: bool,
    /// Since when no jobmanager answered (`None` while one does).
    pub unreachable_since: Option<Instant>,
    /// The partitions were released because no jobmanager answered within the grace.
    pub grace_expired: bool,
    /// Partitions the jobmanager is still freeing for this taskmanager (from its last answer).
    pub awaiting: u32,
    /// Why this taskmanager cannot take partitions (its Redis or Kafka is unreachable), if so:
    /// it does not register until it can.
    pub blocked: Option<String>,
    /// Why the jobmanager gives it nothing for now (it did not take an assignment in time).
    pub held_back: Option<String>,
}

impl Link {
    /// How long no jobmanager has answered.
    pub fn unreachable_for(&self, now: Instant) -> Option<Duration> {
        self.unreachable_since
            .map(|since| now.saturating_duration_since(since))
    }
}

/// What the taskmanager holds, for [`readiness`].
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Holdings {
    /// Partitions held in any phase (running, being claimed or released).
    pub held: usize,
    /// Assigned partitions not running yet.
    pub claiming: usize,
}

/// `/readyz`'s answer: `Ok` or a short reason.
pub(super) fn readiness(
    link: &Link,
    job_state: Option<JobState>,
    holdings: Holdings,
    now: Instant,
    grace: Duration,
) -> Result<(), String> {
    let Holdings { held, claiming } = holdings;
    if let Some(reason) = &link.blocked {
        return Err(format!("cannot take partitions: {reason}"));
    }
    if let Some(down) = link.unreachable_for(now).filter(|d| *d > grace) {
        return Err(format!(
            "jobmanager unreachable for {}s (longer than the {}s grace): partitions released",
            down.as_secs(),
            grace.as_secs()
        ));
    }
    if !link.registered {
        return Err("not registered with the jobmanager yet".into());
    }
    match job_state {
        None => return Err("waiting for the jobmanager's first answer".into()),
        // A (re)starting jobmanager adopts what members hold and assigns the rest after its
        // start-up grace: a member that holds something carries on; a new one has taken
        // nothing yet (a rollout must not count it while the jobmanager restarts).
        Some(JobState::Initializing) if held == 0 => {
            return Err("the jobmanager is starting: nothing assigned yet".into())
        }
        Some(JobState::Running) | Some(JobState::Initializing) => {}
        Some(_) => return Ok(()),
    }
    if let Some(reason) = &link.held_back {
        return Err(format!("held back by the jobmanager: {reason}"));
    }
    if claiming > 0 {
        return Err(format!("claiming {claiming} partitions"));
    }
    if link.awaiting > 0 {
        return Err(format!(
            "waiting for {} partitions their owners are releasing",
            link.awaiting
        ));
    }
    Ok(())
}

/// The link's Prometheus metrics (`streamjob_taskmanager_*`), registered by the taskmanager
/// process (standalone mode's in-process taskmanagers do not).
#[derive(Debug, Default, Clone)]
pub struct LinkMetrics {
    /// 1 while registered with a jobmanager that answers.
    pub jobmanager_reachable: Gauge,
    /// How long no jobmanager has answered (0 while one does).
    pub jobmanager_unreachable_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Times every partition was released because no jobmanager answered within the grace.
    pub grace_releases: Counter,
    /// 1 while `/readyz` answers 200.
    pub ready: Gauge,
}

impl LinkMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "taskmanager_jobmanager_reachable",
            "1 while registered with a jobmanager that answers",
            self.jobmanager_reachable.clone(),
        );
        registry.register(
            "taskmanager_jobmanager_unreachable_seconds",
            "How long no jobmanager has answered (0 while one does)",
            self.jobmanager_unreachable_seconds.clone(),
        );
        registry.register(
            "taskmanager_grace_releases",
            "Times every partition was released because no jobmanager answered within taskmanager.jobmanagerGrace",
            self.grace_releases.clone(),
        );
        registry.register(
            "taskmanager_ready",
            "1 while /readyz answers 200 (registered and holding every assigned partition)",
            self.ready.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(120);

    fn registered() -> Link {
        Link {
            registered: true,
            ..Link::default()
        }
    }

    #[test]
    fn ready_only_when_registered_and_holding_everything() {
        let now = Instant::now();
        let running = Some(JobState::Running);
        let err =
            readiness(&Link::default(), None, holding(0, 0), now, GRACE).expect_err("unregistered");
        assert!(err.contains("not registered"), "{err}");
        let err =
            readiness(&registered(), None, holding(0, 0), now, GRACE).expect_err("no answer yet");
        assert!(err.contains("first answer"), "{err}");
        assert_eq!(
            readiness(&registered(), running, holding(2, 0), now, GRACE),
            Ok(())
        );
        let err =
            readiness(&registered(), running, holding(3, 3), now, GRACE).expect_err("claiming");
        assert_eq!(err, "claiming 3 partitions");
        let waiting = Link {
            awaiting: 2,
            ..registered()
        };
        let err = readiness(&waiting, running, holding(1, 0), now, GRACE).expect_err("awaiting");
        assert!(err.contains("waiting for 2 partitions"), "{err}");
    }

    fn holding(held: usize, claiming: usize) -> Holdings {
        Holdings { held, claiming }
    }

    #[test]
    fn a_job_that_is_not_running_has_nothing_to_take() {
        let now = Instant::now();
        for state in [JobState::Stopping, JobState::Finished] {
            assert_eq!(
                readiness(&registered(), Some(state), holding(0, 0), now, GRACE),
                Ok(())
            );
        }
        let starting = Some(JobState::Initializing);
        assert_eq!(
            readiness(&registered(), starting, holding(2, 0), now, GRACE),
            Ok(()),
            "a member that holds partitions keeps them through a jobmanager restart"
        );
        let err = readiness(&registered(), starting, holding(0, 0), now, GRACE)
            .expect_err("a new member took nothing yet");
        assert!(err.contains("starting"), "{err}");
    }

    #[test]
    fn an_unreachable_jobmanager_is_tolerated_for_the_grace_only() {
        let now = Instant::now();
        let down = |secs| Link {
            unreachable_since: now.checked_sub(Duration::from_secs(secs)),
            ..registered()
        };
        let running = Some(JobState::Running);
        assert_eq!(
            readiness(&down(60), running, holding(2, 0), now, GRACE),
            Ok(())
        );
        let err =
            readiness(&down(130), running, holding(0, 0), now, GRACE).expect_err("past the grace");
        assert!(err.contains("unreachable for 130s"), "{err}");
    }

    #[test]
    fn a_held_back_taskmanager_is_not_ready() {
        let link = Link {
            held_back: Some("did not take partitions [1]".into()),
            ..registered()
        };
        let err = readiness(
            &link,
            Some(JobState::Running),
            holding(1, 0),
            Instant::now(),
            GRACE,
        )
        .expect_err("held back");
        assert!(err.contains("held back by the jobmanager"), "{err}");
    }

    #[test]
    fn a_blocked_taskmanager_says_why() {
        let link = Link {
            blocked: Some("Redis: connection refused".into()),
            ..Link::default()
        };
        let err =
            readiness(&link, None, holding(0, 0), Instant::now(), GRACE).expect_err("blocked");
        assert!(err.contains("Redis: connection refused"), "{err}");
    }
}
