//! Where the worker keeps the records the stack gave back: one bay per failure domain that
//! refused, each with its own pause, and a line of records waiting for their one more try.
//!
//! Pure bookkeeping: time is passed in, nothing here reads a clock, wakes a task or counts.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::Domain;

/// The longest a domain that refused waits before one of its parked records is offered again:
/// a breaker that closes is used again within this, and a bulkhead with no call of the
/// hand-off's own to wait for is looked at again at most this late.
pub(super) const LOOK_AGAIN: Duration = Duration::from_millis(100);

/// The shortest pause: a breaker's `retry_after` below this, and a full bulkhead's first pause.
pub(super) const SHORTEST: Duration = Duration::from_millis(1);

/// A record the worker holds: taken from the queue, in the stack, or parked.
pub(super) struct Held<Req> {
    /// `None` once given to the stack for good (neither parking nor one more try is on, so no
    /// copy is kept).
    pub(super) request: Option<Req>,
    /// When it was accepted, on the hand-off's coarse clock.
    pub(super) stamp: u32,
    /// Its place in the order of acceptance (the worker numbers records as it takes them from
    /// the queue): parked records go back in this order, whatever order their calls ended in.
    pub(super) seq: u64,
    /// Whether it already had its one more try after a dependency fault.
    pub(super) retried: bool,
    /// Its weight, given back to the byte budget when it is finished.
    pub(super) weight: usize,
    /// The bay it was offered from, if it is the first record offered after that bay's pause:
    /// its outcome decides whether the bay drains or waits again.
    pub(super) probe_of: Option<Domain>,
}

/// Why a domain refused, and so how long it waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refused {
    /// An open breaker, with its `retry_after` (`None`: forced open).
    Breaker(Option<Duration>),
    /// A full bulkhead. `calls` says whether a call of the hand-off's own is in the stack, whose
    /// end frees a slot.
    Bulkhead { calls: bool },
}

/// When a bay's records may go again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    /// Nothing goes before this instant.
    Until(Instant),
    /// A full bulkhead: nothing goes until one of the hand-off's calls ends, or this instant.
    CallEnds(Instant),
    /// One record went out after the pause; its outcome opens the bay or closes it again.
    Probing,
    /// The domain took the probe: the bay drains, oldest first.
    Open,
}

/// The records one domain refused, oldest first, and its pause.
struct Bay<Req> {
    records: VecDeque<Held<Req>>,
    gate: Gate,
    /// Bulkhead pauses in a row without a call to wait for: each doubles the pause.
    strikes: u32,
}

impl<Req> Bay<Req> {
    /// Puts `record` back in the order of acceptance.
    fn insert(&mut self, record: Held<Req>) {
        let at = self.records.partition_point(|held| held.seq <= record.seq);
        self.records.insert(at, record);
    }

    /// The probe: the oldest record that has not used its one more try (a failed probe then
    /// costs a try, not a record), or the oldest.
    fn take_probe(&mut self) -> Option<Held<Req>> {
        let at = self
            .records
            .iter()
            .position(|held| !held.retried)
            .unwrap_or(0);
        self.records.remove(at)
    }
}

/// Every parked record, by the domain that refused it.
pub(super) struct Lot<Req> {
    bays: HashMap<Domain, Bay<Req>>,
    /// Bays that may send now (open, or whose pause is over), in turn.
    turns: VecDeque<Domain>,
    /// Records waiting for their one more try after a dependency fault, oldest first.
    faulted: VecDeque<Held<Req>>,
    /// When the faulted records go even if nothing succeeded since.
    faulted_until: Option<Instant>,
    /// Whether the faulted records may go (a call succeeded after they failed, or their wait is
    /// over).
    faulted_due: bool,
    /// Records parked, in bays and in `faulted`.
    len: usize,
    /// Records parked beyond this stop the worker from taking new ones from the queue (which
    /// then fills, and drops the newest): parking never holds more than this plus the calls
    /// in flight when it was reached.
    limit: usize,
    /// Whether the worker has timers. Without, faulted records go again at once (nothing
    /// would end their wait if no call succeeded).
    timers: bool,
}

impl<Req> Lot<Req> {
    pub(super) fn new(limit: usize, timers: bool) -> Self {
        Self {
            bays: HashMap::new(),
            turns: VecDeque::new(),
            faulted: VecDeque::new(),
            faulted_until: None,
            faulted_due: false,
            len: 0,
            limit,
            timers,
        }
    }

    /// Records parked.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Domains with a bay (at most one per parked record or probe in the stack).
    #[cfg(test)]
    pub(super) fn domains(&self) -> usize {
        self.bays.len()
    }

    /// Whether the worker may take new records from the queue.
    pub(super) fn has_room(&self) -> bool {
        self.len < self.limit
    }

    /// Whether some domain is waiting out a pause (refusals then are no sign of work done).
    pub(super) fn any_paused(&self) -> bool {
        self.bays
            .values()
            .any(|bay| matches!(bay.gate, Gate::Until(_) | Gate::CallEnds(_)))
    }

    /// Parks a record `domain` refused, and pauses the domain.
    pub(super) fn refused(
        &mut self,
        domain: Domain,
        why: Refused,
        mut record: Held<Req>,
        now: Instant,
    ) {
        record.probe_of = None;
        let bay = self.bays.entry(domain).or_insert_with(|| Bay {
            records: VecDeque::new(),
            gate: Gate::Open,
            strikes: 0,
        });
        let gate = match why {
            Refused::Breaker(retry_after) => Gate::Until(
                now + retry_after
                    .unwrap_or(LOOK_AGAIN)
                    .clamp(SHORTEST, LOOK_AGAIN),
            ),
            Refused::Bulkhead { calls: true } => Gate::CallEnds(now + LOOK_AGAIN),
            Refused::Bulkhead { calls: false } => {
                // No call of ours to wait for (the compartment is full of others' calls):
                // 1 ms, 2 ms, 4 ms ... up to `LOOK_AGAIN`, not a shed every millisecond.
                let wait = SHORTEST
                    .saturating_mul(1 << bay.strikes.min(16))
                    .min(LOOK_AGAIN);
                bay.strikes += 1;
                Gate::Until(now + wait)
            }
        };
        // A later pause already set (by a refusal of a newer record) is kept.
        bay.gate = match (bay.gate, gate) {
            (Gate::Until(a) | Gate::CallEnds(a), Gate::Until(b) | Gate::CallEnds(b)) if a > b => {
                bay.gate
            }
            _ => gate,
        };
        bay.insert(record);
        self.len += 1;
    }

    /// Parks a record for its one more try after a dependency fault: it goes again after the
    /// next call that succeeds, or after [`LOOK_AGAIN`] if no domain is refusing, whichever
    /// comes first.
    pub(super) fn faulted(&mut self, record: Held<Req>, now: Instant) {
        let at = self.faulted.partition_point(|held| held.seq <= record.seq);
        self.faulted.insert(at, record);
        self.faulted_until.get_or_insert(now + LOOK_AGAIN);
        self.faulted_due |= !self.timers;
        self.len += 1;
    }

    /// A call ended that was no refusal (it reached the dependency, or the stack's end): a
    /// full bulkhead has a free slot again. `delivered`: the dependency took it, so the
    /// faulted records may go.
    pub(super) fn call_ended(&mut self, delivered: bool) {
        if delivered && !self.faulted.is_empty() {
            self.faulted_due = true;
        }
        for (&domain, bay) in &mut self.bays {
            if let Gate::CallEnds(_) = bay.gate {
                bay.gate = Gate::Probing;
                self.turns.push_back(domain);
            }
        }
    }

    /// The probe of `domain`'s bay ended other than by that domain's refusal (which pauses the
    /// bay again by itself): delivered, the bay drains; otherwise it waits [`LOOK_AGAIN`] and
    /// probes again. A bay left with nothing is dropped.
    pub(super) fn probe_ended(&mut self, domain: Domain, delivered: bool, now: Instant) {
        let Entry::Occupied(mut entry) = self.bays.entry(domain) else {
            return;
        };
        let bay = entry.get_mut();
        if bay.gate != Gate::Probing {
            return;
        }
        if bay.records.is_empty() {
            entry.remove();
        } else if delivered {
            bay.gate = Gate::Open;
            bay.strikes = 0;
            self.turns.push_back(domain);
        } else {
            bay.gate = Gate::Until(now + LOOK_AGAIN);
        }
    }

    /// Opens the pauses that are over by `now`; returns the earliest one still running (for
    /// the worker's one timer).
    pub(super) fn wake(&mut self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        for (&domain, bay) in &mut self.bays {
            if let Gate::Until(at) | Gate::CallEnds(at) = bay.gate {
                if at <= now {
                    bay.gate = Gate::Probing;
                    self.turns.push_back(domain);
                } else {
                    next = Some(next.map_or(at, |next| next.min(at)));
                }
            }
        }
        if let Some(at) = self.faulted_until {
            // While a domain refuses, the faulted records wait for a success (a probe's): sent
            // on a timer, one could take the breaker's probe and fail its last try.
            if at > now {
                next = Some(next.map_or(at, |next| next.min(at)));
            } else if self.bays.is_empty() {
                self.faulted_due = true;
            }
        }
        next
    }

    /// Whether a parked record may be sent now.
    #[cfg(test)]
    pub(super) fn has_due(&self) -> bool {
        (self.faulted_due && !self.faulted.is_empty()) || !self.turns.is_empty()
    }

    /// The next parked record to send, if one may go: faulted records first (they are the
    /// oldest), then the bays in turn, each its oldest (a bay after its pause sends one probe
    /// and waits for its outcome). Empty bays that wait for nothing are dropped on the way.
    pub(super) fn next_due(&mut self) -> Option<Held<Req>> {
        if self.faulted_due {
            if let Some(record) = self.faulted.pop_front() {
                self.len -= 1;
                if self.faulted.is_empty() {
                    self.faulted_due = false;
                    self.faulted_until = None;
                }
                return Some(record);
            }
            self.faulted_due = false;
            self.faulted_until = None;
        }
        while let Some(domain) = self.turns.pop_front() {
            let Entry::Occupied(mut entry) = self.bays.entry(domain) else {
                continue;
            };
            let bay = entry.get_mut();
            let record = match bay.gate {
                Gate::Probing => bay.take_probe().map(|mut record| {
                    record.probe_of = Some(domain);
                    record
                }),
                Gate::Open => {
                    let record = bay.records.pop_front();
                    if record.is_some() {
                        // Its turn comes again after the others'.
                        self.turns.push_back(domain);
                    }
                    record
                }
                // Paused again since it was given its turn.
                Gate::Until(_) | Gate::CallEnds(_) => continue,
            };
            match record {
                Some(record) => {
                    self.len -= 1;
                    if bay.records.is_empty() && bay.gate == Gate::Open {
                        entry.remove();
                    }
                    return Some(record);
                }
                None => {
                    // Nothing left to send: the bay is done with.
                    entry.remove();
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(stamp: u32) -> Held<u32> {
        Held {
            request: Some(stamp),
            stamp,
            seq: u64::from(stamp),
            retried: false,
            weight: 0,
            probe_of: None,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_paused_domain_holds_its_records_and_the_others_do_not_wait() {
        let t0 = Instant::now();
        let (sick, well) = (Domain::new(), Domain::new());
        let mut lot = Lot::new(100, true);
        lot.refused(sick, Refused::Breaker(Some(ms(50))), held(2), t0);
        lot.refused(sick, Refused::Breaker(Some(ms(50))), held(1), t0);
        assert_eq!(lot.wake(t0 + ms(10)), Some(t0 + ms(50)));
        assert!(lot.next_due().is_none(), "paused");
        lot.refused(well, Refused::Bulkhead { calls: true }, held(3), t0);
        lot.call_ended(true);
        // The bulkhead's domain goes after a call ended; the breaker's still waits.
        let probe = lot.next_due().expect("the bulkhead's record");
        assert_eq!((probe.stamp, probe.probe_of), (3, Some(well)));
        assert!(lot.next_due().is_none());
        // The breaker's pause ends: one probe, the oldest, then nothing until it answers.
        assert_eq!(lot.wake(t0 + ms(50)), None);
        let probe = lot.next_due().unwrap();
        assert_eq!((probe.stamp, probe.probe_of), (1, Some(sick)));
        assert!(lot.next_due().is_none(), "one probe at a time");
        lot.probe_ended(sick, true, t0 + ms(51));
        assert_eq!(lot.next_due().unwrap().stamp, 2);
        assert_eq!(lot.len(), 0);
        lot.probe_ended(well, true, t0 + ms(52));
        assert_eq!(lot.domains(), 0, "empty bays are dropped");
    }

    #[test]
    fn a_failed_probe_pauses_its_domain_again() {
        let t0 = Instant::now();
        let d = Domain::new();
        let mut lot = Lot::new(100, true);
        lot.refused(d, Refused::Breaker(None), held(1), t0);
        lot.refused(d, Refused::Breaker(None), held(2), t0);
        assert_eq!(
            lot.wake(t0),
            Some(t0 + LOOK_AGAIN),
            "forced open: look again"
        );
        lot.wake(t0 + LOOK_AGAIN);
        let probe = lot.next_due().unwrap();
        lot.probe_ended(probe.probe_of.unwrap(), false, t0 + LOOK_AGAIN);
        assert!(lot.next_due().is_none());
        assert_eq!(lot.wake(t0 + LOOK_AGAIN), Some(t0 + LOOK_AGAIN * 2));
    }

    #[test]
    fn the_probe_is_a_record_that_still_has_its_one_more_try() {
        let t0 = Instant::now();
        let d = Domain::new();
        let mut lot = Lot::new(100, true);
        let mut tried = held(1);
        tried.retried = true;
        lot.refused(d, Refused::Breaker(Some(ms(1))), tried, t0);
        lot.refused(d, Refused::Breaker(Some(ms(1))), held(2), t0);
        lot.wake(t0 + ms(1));
        assert_eq!(lot.next_due().unwrap().stamp, 2);
    }

    #[test]
    fn a_bulkhead_with_no_call_to_wait_for_backs_off_to_look_again() {
        let t0 = Instant::now();
        let d = Domain::new();
        let mut lot = Lot::new(100, true);
        let mut waits = Vec::new();
        for _ in 0..10 {
            lot.refused(d, Refused::Bulkhead { calls: false }, held(1), t0);
            waits.push(lot.wake(t0).unwrap() - t0);
            lot.wake(t0 + LOOK_AGAIN);
            lot.next_due().unwrap();
        }
        assert_eq!(&waits[..4], &[ms(1), ms(2), ms(4), ms(8)]);
        assert_eq!(waits[9], LOOK_AGAIN);
    }

    #[test]
    fn faulted_records_wait_for_a_success_or_look_again() {
        let t0 = Instant::now();
        let mut lot = Lot::new(100, true);
        lot.faulted(held(1), t0);
        assert_eq!(lot.wake(t0), Some(t0 + LOOK_AGAIN));
        assert!(!lot.has_due() && lot.next_due().is_none(), "not at once");
        lot.call_ended(true);
        assert_eq!(lot.next_due().unwrap().stamp, 1);
        lot.faulted(held(2), t0 + ms(6));
        assert!(lot.next_due().is_none());
        lot.wake(t0 + ms(6) + LOOK_AGAIN);
        assert_eq!(lot.next_due().unwrap().stamp, 2);
        assert_eq!(lot.len(), 0);
    }
}
