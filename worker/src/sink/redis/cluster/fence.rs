//! The per-slot fence: what one slot records of one partition, and the owner's decisions from
//! it. Pure: the argument of `mod.rs` is checked here by unit tests.

use std::fmt;

use super::slot::SLOTS;
use crate::sink::redis::window::SeriesMarks;
use crate::sink::redis::SinkError;

/// What a slot's fence records of one partition: the partition's last batch that wrote to the
/// slot covered offsets `from..next`, applied by an owner at `epoch`. Stored as the text
/// `epoch:from:next` in field `{partition}` of the slot's fence hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotFence {
    pub epoch: u64,
    pub from: i64,
    pub next: i64,
}

impl fmt::Display for SlotFence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.epoch, self.from, self.next)
    }
}

impl SlotFence {
    /// Parses the stored text; `None` for an empty one (no fence).
    pub fn parse(text: &str) -> Result<Option<Self>, SinkError> {
        if text.is_empty() {
            return Ok(None);
        }
        let mut parts = text.split(':');
        let mut field = || parts.next().and_then(|p| p.parse::<i64>().ok());
        match (field(), field(), field()) {
            (Some(epoch), Some(from), Some(next)) if epoch >= 0 && from <= next => Ok(Some(Self {
                epoch: epoch as u64,
                from,
                next,
            })),
            _ => Err(SinkError::Script(format!(
                "a slot fence holds {text:?}, not epoch:from:next"
            ))),
        }
    }
}

/// The fences an owner knows of one partition, one per slot: what it read at its claim, then
/// what its own applies wrote. A unit's compare-and-set checks a slot against this.
#[derive(Clone)]
pub struct SlotPositions {
    fences: Box<[Option<SlotFence>]>,
}

impl Default for SlotPositions {
    fn default() -> Self {
        Self {
            fences: vec![None; usize::from(SLOTS)].into_boxed_slice(),
        }
    }
}

impl fmt::Debug for SlotPositions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let known = self.fences.iter().filter(|f| f.is_some()).count();
        f.debug_struct("SlotPositions")
            .field("slots_with_fence", &known)
            .finish()
    }
}

impl SlotPositions {
    pub fn get(&self, slot: u16) -> Option<SlotFence> {
        self.fences[usize::from(slot % SLOTS)]
    }

    pub fn set(&mut self, slot: u16, fence: Option<SlotFence>) {
        self.fences[usize::from(slot % SLOTS)] = fence;
    }

    /// The slots with a fence, and their fences.
    pub fn iter(&self) -> impl Iterator<Item = (u16, SlotFence)> + '_ {
        (0..SLOTS).filter_map(|slot| self.get(slot).map(|fence| (slot, fence)))
    }
}

/// What a unit does with one slot of a batch covering `from..next`, given what the owner knows
/// of the slot's fence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotStep {
    /// The slot has this batch already (its fence ends at or after the batch): leave it out.
    Skip,
    /// Apply the slot's writes, compare-and-set against `expected` (`None`: no fence yet).
    Apply { expected: Option<SlotFence> },
}

/// A batch crosses a slot's fence: part of it is applied to the slot and part is not. The
/// pipeline ends its batches at [`boundaries`], so this is a bug, refused like the single
/// node's overlap (never a partial re-apply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Straddle {
    pub fence: SlotFence,
}

pub fn slot_step(known: Option<SlotFence>, from: i64, next: i64) -> Result<SlotStep, Straddle> {
    match known {
        None => Ok(SlotStep::Apply { expected: None }),
        Some(fence) if fence.next >= next => Ok(SlotStep::Skip),
        Some(fence) if fence.next <= from => Ok(SlotStep::Apply {
            expected: Some(fence),
        }),
        Some(fence) => Err(Straddle { fence }),
    }
}

/// Why a unit refused a slot whose fence was not what the owner expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// A newer owner wrote the slot: this owner is a zombie and stops.
    Fenced { stored_epoch: u64 },
    /// The slot lost writes this owner had seen acknowledged (a promoted replica behind its old
    /// primary, a restart from an older AOF): rewind (see [`rewind_point`]).
    Lost { stored: Option<SlotFence> },
    /// An older owner (a zombie that has not heard of the claim yet) applied a batch the owner
    /// did not expect: nothing is lost or doubled (its batch was compare-and-set too); read the
    /// fences again and go on from what they say.
    Moved { stored: SlotFence },
}

/// Classifies a slot the unit refused: `expected` what the owner sent, `stored` what the slot
/// holds, `epoch` the owner's.
pub fn mismatch(expected: Option<SlotFence>, stored: Option<SlotFence>, epoch: u64) -> Mismatch {
    match (expected, stored) {
        (_, Some(stored)) if stored.epoch > epoch => Mismatch::Fenced {
            stored_epoch: stored.epoch,
        },
        (Some(_), None) => Mismatch::Lost { stored: None },
        (Some(expected), Some(stored)) if stored.next < expected.next => Mismatch::Lost {
            stored: Some(stored),
        },
        (_, Some(stored)) => Mismatch::Moved { stored },
        // Nothing expected and nothing stored is no mismatch; the script never reports it.
        (None, None) => Mismatch::Lost { stored: None },
    }
}

/// The record every unit of a partition leaves on its node, in field `u{partition}` of the fence
/// hash of the node's *anchor* slot (the highest slot the owner's slot map gives the node), as
/// `epoch:seq:from`: the owner's epoch, its unit counter (one owner's units are numbered in the
/// order it sends them, rewinds included) and the first offset of the unit's batch. Compared
/// and set by every unit on the node, whatever slots it writes, so a node that lost acknowledged
/// writes refuses the first unit after the loss.
///
/// The sink's marks also carry the batch's end and what a single node's fence stores with it of
/// the event-time series (the partition's clock after the batch, the job watermark it decided
/// with), as `epoch:seq:from:next:clock:learned` (an empty field: unknown): an owner that resumes
/// after this unit's batch decides the events that follow as the single node would
/// ([`resume_mark`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UnitMark {
    pub epoch: u64,
    pub seq: u64,
    pub from: i64,
    /// The end of the unit's batch (`None` in marks written without it).
    pub next: Option<i64>,
    pub series: SeriesMarks,
}

impl fmt::Display for UnitMark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.epoch, self.seq, self.from)?;
        if self.next.is_some() || self.series != SeriesMarks::default() {
            let text = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_default();
            write!(
                f,
                ":{}:{}:{}",
                text(self.next),
                text(self.series.clock),
                text(self.series.learned)
            )?;
        }
        Ok(())
    }
}

impl UnitMark {
    /// Where an owner resumes when this is the oldest of the nodes' latest marks: after the
    /// unit's batch if the mark records its end, else at its start.
    pub fn resume(&self) -> i64 {
        self.next.unwrap_or(self.from)
    }

    /// Parses the stored text; `None` for an empty one.
    pub fn parse(text: &str) -> Result<Option<Self>, SinkError> {
        if text.is_empty() {
            return Ok(None);
        }
        let mut parts = text.split(':');
        let mut field = || parts.next().and_then(|p| p.parse::<i64>().ok());
        match (field(), field(), field()) {
            (Some(epoch), Some(seq), Some(from)) if epoch >= 0 && seq >= 0 => Ok(Some(Self {
                epoch: epoch as u64,
                seq: seq as u64,
                from,
                next: field(),
                series: SeriesMarks {
                    clock: field(),
                    learned: field(),
                },
            })),
            _ => Err(SinkError::Script(format!(
                "a unit mark holds {text:?}, not epoch:seq:from"
            ))),
        }
    }
}

/// Where an owner that just claimed the partition (and knows nothing of it) resumes, from the
/// unit marks read at the claim, grouped by the node that holds them: for each node, the `from`
/// of its latest mark (by epoch, then seq), and the smallest of those over the nodes. `None`
/// when there is no mark (a new partition; the caller starts from its checkpoint).
///
/// Why this loses nothing: a node loses only a suffix of the writes it acknowledged (its
/// replica, or its AOF, holds a prefix of its write stream, and a unit is one atomic entry in
/// it). Its latest surviving mark is the last unit it kept. Every unit after it was lost, and
/// none was applied since: the next unit on the node would have found the mark changed and
/// refused. An owner sends a node's units in offset order from wherever it resumed; it resumes
/// at an earlier offset only after finding a loss, which the node's mark shows. So every lost
/// unit starts at or after the kept unit's `from`; and, since the kept unit's batch is whole on
/// the node and the owner's next unit there belongs to a later batch, at or after its `next`
/// when the mark records it (the sink's marks do): the owner then resumes *after* the last batch
/// every node kept, not at its start.
pub fn resume_point<N, M>(nodes: N) -> Option<i64>
where
    N: IntoIterator<Item = M>,
    M: IntoIterator<Item = UnitMark>,
{
    resume_mark(nodes).map(|m| m.resume())
}

/// The mark [`resume_point`] resumes at, with the series marks that go with it.
pub fn resume_mark<N, M>(nodes: N) -> Option<UnitMark>
where
    N: IntoIterator<Item = M>,
    M: IntoIterator<Item = UnitMark>,
{
    nodes
        .into_iter()
        .filter_map(|marks| marks.into_iter().max_by_key(|m| (m.epoch, m.seq)))
        .min_by_key(UnitMark::resume)
}

/// Where an owner that knows what it wrote (`expected`) resumes after finding `stored`: the
/// smallest `next` among the slots that lost writes (everything a slot lost comes after its
/// surviving fence), or `if_missing` for a slot whose fence is gone altogether (the whole slot
/// was lost: nothing older can be recovered than what the caller still has, its checkpoint).
/// `None` when no slot lost anything.
pub fn rewind_point(
    expected: &SlotPositions,
    stored: &SlotPositions,
    if_missing: i64,
) -> Option<i64> {
    expected
        .iter()
        .filter_map(|(slot, expected)| match stored.get(slot) {
            None => Some(if_missing),
            Some(found) if found.next < expected.next => Some(found.next),
            Some(_) => None,
        })
        .min()
}

/// The offsets after `resume` at which some slot's fence begins or ends, in order: the owner
/// ends its batches there, so that each later batch is, in every slot, wholly applied or wholly
/// not ([`slot_step`] never meets a [`Straddle`]).
pub fn boundaries(stored: &SlotPositions, resume: i64) -> Vec<i64> {
    let mut cuts: Vec<i64> = stored
        .iter()
        .flat_map(|(_, fence)| [fence.from, fence.next])
        .filter(|offset| *offset > resume)
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fence(epoch: u64, from: i64, next: i64) -> SlotFence {
        SlotFence { epoch, from, next }
    }

    #[test]
    fn a_fence_round_trips_through_its_text() {
        let f = fence(1 << 40, 10, 20);
        assert_eq!(SlotFence::parse(&f.to_string()).unwrap(), Some(f));
        assert_eq!(SlotFence::parse("").unwrap(), None);
        for bad in ["1:2", "x:1:2", "1:5:4", "-1:1:2"] {
            assert!(SlotFence::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_slot_is_skipped_applied_or_refused_by_where_its_fence_lies() {
        assert_eq!(
            slot_step(None, 10, 20),
            Ok(SlotStep::Apply { expected: None })
        );
        for next in [20, 25] {
            assert_eq!(
                slot_step(Some(fence(1, 0, next)), 10, 20),
                Ok(SlotStep::Skip)
            );
        }
        for next in [3, 10] {
            let known = Some(fence(1, 0, next));
            assert_eq!(
                slot_step(known, 10, 20),
                Ok(SlotStep::Apply { expected: known })
            );
        }
        assert_eq!(
            slot_step(Some(fence(1, 5, 15)), 10, 20),
            Err(Straddle {
                fence: fence(1, 5, 15)
            })
        );
    }

    #[test]
    fn a_refused_slot_is_fenced_lost_or_moved_on() {
        let ours = 5;
        assert_eq!(
            mismatch(Some(fence(5, 0, 10)), Some(fence(6, 0, 10)), ours),
            Mismatch::Fenced { stored_epoch: 6 }
        );
        assert_eq!(
            mismatch(Some(fence(5, 0, 10)), None, ours),
            Mismatch::Lost { stored: None }
        );
        assert_eq!(
            mismatch(Some(fence(5, 10, 20)), Some(fence(5, 0, 10)), ours),
            Mismatch::Lost {
                stored: Some(fence(5, 0, 10))
            }
        );
        assert_eq!(
            mismatch(Some(fence(5, 0, 10)), Some(fence(4, 10, 20)), ours),
            Mismatch::Moved {
                stored: fence(4, 10, 20)
            }
        );
        assert_eq!(
            mismatch(None, Some(fence(4, 0, 10)), ours),
            Mismatch::Moved {
                stored: fence(4, 0, 10)
            }
        );
    }

    fn mark(epoch: u64, seq: u64, from: i64) -> UnitMark {
        UnitMark {
            epoch,
            seq,
            from,
            next: None,
            series: SeriesMarks::default(),
        }
    }

    #[test]
    fn a_mark_carries_the_series_marks_at_its_offset() {
        let with = UnitMark {
            series: SeriesMarks {
                clock: Some(1_700_000_000_000),
                learned: None,
            },
            next: Some(9),
            ..mark(3, 4, 5)
        };
        assert_eq!(with.to_string(), "3:4:5:9:1700000000000:");
        assert_eq!(UnitMark::parse(&with.to_string()).unwrap(), Some(with));
        assert_eq!(mark(3, 4, 5).to_string(), "3:4:5");
    }

    #[test]
    fn a_claim_resumes_at_the_last_unit_every_node_kept() {
        // Node A kept the unit of batch 30..; node B lost it and kept the one of batch 20...
        let a = vec![mark(1, 1, 0), mark(1, 4, 30), mark(1, 3, 20)];
        let b = vec![mark(1, 2, 10), mark(1, 3, 20)];
        assert_eq!(resume_point([a.clone(), b]), Some(20));
        assert_eq!(resume_point([a, vec![]]), Some(30));
        // A later owner's replay of older offsets is its latest unit, whatever its offsets.
        assert_eq!(
            resume_point([vec![mark(1, 9, 90), mark(2, 1, 40)]]),
            Some(40)
        );
        assert_eq!(resume_point(Vec::<Vec<UnitMark>>::new()), None);
        assert_eq!(UnitMark::parse("3:4:5").unwrap(), Some(mark(3, 4, 5)));
        assert!(UnitMark::parse("3:4").is_err());
    }

    #[test]
    fn a_rewind_goes_back_to_the_oldest_slot_that_lost_writes() {
        let mut expected = SlotPositions::default();
        let mut stored = SlotPositions::default();
        expected.set(1, Some(fence(1, 30, 40)));
        stored.set(1, Some(fence(1, 30, 40)));
        assert_eq!(rewind_point(&expected, &stored, 0), None);
        expected.set(2, Some(fence(1, 30, 40)));
        stored.set(2, Some(fence(1, 10, 20)));
        assert_eq!(rewind_point(&expected, &stored, 0), Some(20));
        expected.set(3, Some(fence(1, 30, 40)));
        assert_eq!(rewind_point(&expected, &stored, 5), Some(5));
    }

    #[test]
    fn batches_end_where_any_slot_fence_begins_or_ends() {
        let mut stored = SlotPositions::default();
        stored.set(7, Some(fence(1, 10, 20)));
        stored.set(9, Some(fence(1, 20, 35)));
        stored.set(11, Some(fence(1, 0, 10)));
        assert_eq!(boundaries(&stored, 10), vec![20, 35]);
        assert_eq!(boundaries(&stored, 40), Vec::<i64>::new());
    }
}
