//! What one process knows of the job's event-time watermark, and which value it may acknowledge.
//!
//! The jobmanager sends the job watermark in every heartbeat answer ([`WatermarkBoard::learn`]).
//! Each batch decides lateness against a floor that includes the value learned when it was
//! built ([`WatermarkBoard::begin_batch`]) and keeps it until it is applied or given up
//! ([`WatermarkBoard::end_batch`]). The acknowledgement sent back ([`WatermarkBoard::ack`]) is the
//! smallest value any batch of this process may still decide with, so once the jobmanager records
//! a watermark as final (only after every taskmanager acknowledged it), no batch of this process
//! can still count an event into a window it closes.

use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct WatermarkBoard {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    learned: Option<i64>,
    /// Partition → the learned value its in-flight batch decided with (`None`: nothing learned).
    in_flight: HashMap<i32, Option<i64>>,
}

impl WatermarkBoard {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a job watermark from the jobmanager (never moves back).
    pub fn learn(&self, job_watermark: Option<i64>) {
        let mut inner = self.inner();
        inner.learned = match (inner.learned, job_watermark) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }

    pub fn learned(&self) -> Option<i64> {
        self.inner().learned
    }

    /// The learned value a batch of `partition` decides with; held until [`Self::end_batch`].
    pub fn begin_batch(&self, partition: i32) -> Option<i64> {
        let mut inner = self.inner();
        let learned = inner.learned;
        inner.in_flight.insert(partition, learned);
        learned
    }

    /// [`Self::begin_batch`] for a batch that re-applies what Redis lost: it decides with
    /// `learned` (what the fence's batch decided with), held the same way.
    pub fn begin_replay_batch(&self, partition: i32, learned: Option<i64>) -> Option<i64> {
        self.inner().in_flight.insert(partition, learned);
        learned
    }

    pub fn end_batch(&self, partition: i32) {
        self.inner().in_flight.remove(&partition);
    }

    /// The smallest learned value a batch of this process may still decide with.
    pub fn ack(&self) -> Option<i64> {
        let inner = self.inner();
        let mut ack = inner.learned;
        for floor in inner.in_flight.values() {
            ack = match (ack, floor) {
                (Some(a), Some(f)) => Some(a.min(*f)),
                _ => None,
            };
        }
        ack
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ack_waits_for_batches_built_with_an_older_watermark() {
        let board = WatermarkBoard::default();
        assert_eq!(board.ack(), None);
        board.learn(Some(100));
        assert_eq!(board.begin_batch(0), Some(100));
        board.learn(Some(200));
        board.learn(Some(150)); // never back
        assert_eq!(board.learned(), Some(200));
        assert_eq!(
            board.ack(),
            Some(100),
            "partition 0's batch still decides with 100"
        );
        assert_eq!(board.begin_batch(1), Some(200));
        board.end_batch(0);
        assert_eq!(board.ack(), Some(200));
        board.end_batch(1);
        let fresh = WatermarkBoard::default();
        fresh.begin_batch(3);
        fresh.learn(Some(10));
        assert_eq!(fresh.ack(), None, "a batch decided with nothing learned");
    }
}
