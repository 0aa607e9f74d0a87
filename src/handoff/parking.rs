//! Where the worker keeps the records the stack gave back: one bay per failure domain that
//! refused, each with its own pause, and a line of records waiting for their one more try.
//!
//! Pure bookkeeping: time is passed in, nothing here reads a clock, wakes a task or counts.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::mem;
use std::time::Duration;

use tokio::time::Instant;

use crate::Domain;

/// The longest a domain that refused waits before one of its parked records is offered again:
/// a breaker that closes is used again within this, and a bulkhead with no call of the
/// hand-off's own to wait for is looked at again at most this late.
pub(super) const LOOK_AGAIN: Duration = Duration::from_millis(100);

/// The shortest pause: a breaker's `retry_after` below this, and a full bulkhead's first pause.
pub(super) const SHORTEST: Duration = Duration::from_millis(1);

/// The longest records wait for their one more try while some domain refuses (see
/// [`Lot::faulted`]): after this they go even if nothing succeeded.
pub(super) const FAULTED_LATEST: Duration = Duration::from_secs(1);

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
    /// Bulkhead pauses in a row without a call to wait for (or whose probe was refused again
    /// after a call ended): each doubles the pause.
    strikes: u32,
    /// Whether the bay's name is in the lot's `turns` (so it is never there twice, and one
    /// turn never sends two probes).
    in_turns: bool,
    /// Whether the bay's name is in the lot's `await_calls`.
    awaits_call: bool,
}

impl<Req> Bay<Req> {
    fn new() -> Self {
        Self {
            records: VecDeque::new(),
            gate: Gate::Open,
            strikes: 0,
            in_turns: false,
            awaits_call: false,
        }
    }

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
    /// Bays whose gate may be [`Gate::CallEnds`]: the ones a call's end opens, so that an
    /// ending looks at them only, not at every bay.
    await_calls: Vec<Domain>,
    /// Records waiting for their one more try after a dependency fault, oldest first.
    faulted: VecDeque<Held<Req>>,
    /// When the faulted records go even if nothing succeeded since: after the first instant
    /// if no domain refuses, after the second in any case.
    faulted_until: Option<(Instant, Instant)>,
    /// Whether the faulted records may go (a call succeeded after they failed, or their wait is
    /// over).
    faulted_due: bool,
    /// Records parked, in bays and in `faulted`.
    len: usize,
    /// Records parked beyond this stop the worker from taking new ones from the queue (which
    /// then fills, and drops the newest): parking never holds more than this plus the calls
    /// in flight when it was reached.
    limit: usize,
    /// The most records one domain's bay holds ([`share`]) while some call is being delivered:
    /// past it, that domain's refusals are final, so that one sick domain never fills the lot
    /// (and with it the queue's capacity) while the others are healthy. When nothing is
    /// delivered (the whole dependency is down, or one breaker covers all of it), one domain
    /// may use the whole lot: there is no one else to keep room for.
    share: usize,
    /// When a call was last delivered: the others are healthy until [`DELIVERING`] after it.
    delivered_at: Option<Instant>,
    /// Whether the worker has timers. Without, faulted records go again at once (nothing
    /// would end their wait if no call succeeded).
    timers: bool,
}

impl<Req> Lot<Req> {
    pub(super) fn new(limit: usize, timers: bool) -> Self {
        Self {
            bays: HashMap::new(),
            turns: VecDeque::new(),
            await_calls: Vec::new(),
            faulted: VecDeque::new(),
            faulted_until: None,
            faulted_due: false,
            len: 0,
            limit,
            share: share(limit),
            delivered_at: None,
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

    /// Parks a record `domain` refused, and pauses the domain. A domain whose bay holds its
    /// [`share`] of the lot already is paused all the same, but the record is given back: that
    /// refusal is final.
    pub(super) fn refused(
        &mut self,
        domain: Domain,
        why: Refused,
        mut record: Held<Req>,
        now: Instant,
    ) -> Result<(), Held<Req>> {
        let was_probe = record.probe_of.take() == Some(domain);
        let bay = self.bays.entry(domain).or_insert_with(Bay::new);
        let gate = match why {
            Refused::Breaker(retry_after) => Gate::Until(
                now + retry_after
                    .unwrap_or(LOOK_AGAIN)
                    .clamp(SHORTEST, LOOK_AGAIN),
            ),
            // The first refusal waits for one of our calls to end. A probe refused again after
            // one did (the call that ended went to another domain, or another caller took the
            // slot) backs off instead: calls ending elsewhere would otherwise each cost a
            // refused probe.
            Refused::Bulkhead { calls: true } if !was_probe => {
                if !mem::replace(&mut bay.awaits_call, true) {
                    self.await_calls.push(domain);
                }
                Gate::CallEnds(now + LOOK_AGAIN)
            }
            Refused::Bulkhead { .. } => {
                // No call of ours to wait for (the compartment is full of others' calls), or
                // waiting for one did not help: 1 ms, 2 ms, 4 ms ... up to `LOOK_AGAIN`, not a
                // refusal every millisecond.
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
        let others_deliver = self
            .delivered_at
            .is_some_and(|at| now.saturating_duration_since(at) < DELIVERING);
        if others_deliver && bay.records.len() >= self.share {
            return Err(record);
        }
        bay.insert(record);
        self.len += 1;
        Ok(())
    }

    /// Parks a record for its one more try after a dependency fault: it goes again after the
    /// next call that succeeds, or after [`LOOK_AGAIN`] if no domain is refusing, or after
    /// [`FAULTED_LATEST`] in any case, whichever comes first. Without timers, at once.
    pub(super) fn faulted(&mut self, record: Held<Req>, now: Instant) {
        let at = self.faulted.partition_point(|held| held.seq <= record.seq);
        self.faulted.insert(at, record);
        if self.timers {
            self.faulted_until
                .get_or_insert((now + LOOK_AGAIN, now + FAULTED_LATEST));
        } else {
            // Nothing could end their wait: no alarm can be set on such a runtime.
            self.faulted_due = true;
        }
        self.len += 1;
    }

    /// A call ended that was no refusal (it reached the dependency, or the stack's end): a
    /// full bulkhead has a free slot again. `delivered`: the dependency took it, so the
    /// faulted records may go. Looks only at the bays that wait for a call to end.
    pub(super) fn call_ended(&mut self, delivered: bool, now: Instant) {
        if delivered {
            self.delivered_at = Some(now);
            if !self.faulted.is_empty() {
                self.faulted_due = true;
            }
        }
        for domain in self.await_calls.drain(..) {
            let Some(bay) = self.bays.get_mut(&domain) else {
                continue;
            };
            bay.awaits_call = false;
            if let Gate::CallEnds(_) = bay.gate {
                bay.gate = Gate::Probing;
                give_turn(&mut self.turns, domain, bay);
            }
        }
    }

    /// The probe of `domain`'s bay ended other than by that domain's refusal (which pauses the
    /// bay again by itself): delivered, the bay drains; otherwise it waits [`LOOK_AGAIN`] and
    /// probes again. A bay left with nothing is dropped.
    pub(super) fn probe_ended(&mut self, domain: Domain, delivered: bool, now: Instant) {
        let Some(bay) = probing(&mut self.bays, domain) else {
            return;
        };
        if delivered {
            bay.gate = Gate::Open;
            bay.strikes = 0;
            give_turn(&mut self.turns, domain, bay);
        } else {
            bay.gate = Gate::Until(now + LOOK_AGAIN);
        }
    }

    /// The probe of `domain`'s bay was never sent (it had expired): the bay's next record is
    /// its probe, at once. A bay left with nothing is dropped.
    pub(super) fn probe_skipped(&mut self, domain: Domain) {
        if let Some(bay) = probing(&mut self.bays, domain) {
            give_turn(&mut self.turns, domain, bay);
        }
    }

    /// Takes out the records `expired` says are too old, from the front of each bay and of the
    /// faulted line (each is in the order of acceptance, so the oldest are in front), and
    /// gives each to `out`. A bay left empty is dropped unless its probe is out. It costs one
    /// look per bay when nothing is that old.
    pub(super) fn expire(
        &mut self,
        mut expired: impl FnMut(&Held<Req>) -> bool,
        mut out: impl FnMut(Held<Req>),
    ) {
        let mut gone = 0;
        let mut take_front = |records: &mut VecDeque<Held<Req>>| {
            while records.front().is_some_and(&mut expired) {
                if let Some(record) = records.pop_front() {
                    gone += 1;
                    out(record);
                }
            }
        };
        self.bays.retain(|_, bay| {
            take_front(&mut bay.records);
            !bay.records.is_empty() || bay.gate == Gate::Probing
        });
        take_front(&mut self.faulted);
        self.len -= gone;
        if self.faulted.is_empty() {
            self.faulted_due = false;
            self.faulted_until = None;
        }
    }

    /// Takes every parked record out (the service broke: none will be tried again).
    pub(super) fn clear(&mut self) -> impl Iterator<Item = Held<Req>> {
        self.len = 0;
        self.turns.clear();
        self.await_calls.clear();
        self.faulted_due = false;
        self.faulted_until = None;
        mem::take(&mut self.bays)
            .into_values()
            .flat_map(|bay| bay.records)
            .chain(mem::take(&mut self.faulted))
    }

    /// Opens the pauses that are over by `now`; returns the earliest one still running (for
    /// the worker's one timer).
    pub(super) fn wake(&mut self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        for (&domain, bay) in &mut self.bays {
            if let Gate::Until(at) | Gate::CallEnds(at) = bay.gate {
                if at <= now {
                    bay.gate = Gate::Probing;
                    give_turn(&mut self.turns, domain, bay);
                } else {
                    next = Some(next.map_or(at, |next| next.min(at)));
                }
            }
        }
        if let Some((soon, latest)) = self.faulted_until {
            // While a domain refuses, the faulted records wait for a success (a probe's), up to
            // `latest`: sent on a timer, one could take a breaker's probe and fail its last try.
            if latest <= now || (soon <= now && self.bays.is_empty()) {
                self.faulted_due = true;
            } else {
                let at = if soon > now { soon } else { latest };
                next = Some(next.map_or(at, |next| next.min(at)));
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
            if !mem::take(&mut bay.in_turns) {
                // Left over from a bay that was dropped and made again.
                continue;
            }
            let record = match bay.gate {
                Gate::Probing => bay.take_probe().map(|mut record| {
                    record.probe_of = Some(domain);
                    record
                }),
                Gate::Open => {
                    let record = bay.records.pop_front();
                    if record.is_some() {
                        // Its turn comes again after the others'.
                        give_turn(&mut self.turns, domain, bay);
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

/// How long after a delivery the dependency counts as healthy somewhere, so that one sick
/// domain is held to its [`share`].
const DELIVERING: Duration = Duration::from_secs(1);

/// The most records one domain may park out of a lot of `limit` while others deliver: half,
/// rounded up, so that one sick domain leaves the other half to the queue and to the other
/// domains.
pub(super) fn share(limit: usize) -> usize {
    limit.div_ceil(2)
}

/// `domain`'s bay if its probe is out and it has records left; a bay whose probe is out with
/// nothing left is dropped.
fn probing<Req>(bays: &mut HashMap<Domain, Bay<Req>>, domain: Domain) -> Option<&mut Bay<Req>> {
    let Entry::Occupied(entry) = bays.entry(domain) else {
        return None;
    };
    if entry.get().gate != Gate::Probing {
        return None;
    }
    if entry.get().records.is_empty() {
        entry.remove();
        return None;
    }
    Some(entry.into_mut())
}

/// Gives `bay` (named `domain`) a turn, unless it has one already.
fn give_turn<Req>(turns: &mut VecDeque<Domain>, domain: Domain, bay: &mut Bay<Req>) {
    if !mem::replace(&mut bay.in_turns, true) {
        turns.push_back(domain);
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
        assert!(lot
            .refused(sick, Refused::Breaker(Some(ms(50))), held(2), t0)
            .is_ok());
        assert!(lot
            .refused(sick, Refused::Breaker(Some(ms(50))), held(1), t0)
            .is_ok());
        assert_eq!(lot.wake(t0 + ms(10)), Some(t0 + ms(50)));
        assert!(lot.next_due().is_none(), "paused");
        assert!(lot
            .refused(well, Refused::Bulkhead { calls: true }, held(3), t0)
            .is_ok());
        lot.call_ended(true, t0);
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
        assert!(lot.refused(d, Refused::Breaker(None), held(1), t0).is_ok());
        assert!(lot.refused(d, Refused::Breaker(None), held(2), t0).is_ok());
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
        assert!(lot
            .refused(d, Refused::Breaker(Some(ms(1))), tried, t0)
            .is_ok());
        assert!(lot
            .refused(d, Refused::Breaker(Some(ms(1))), held(2), t0)
            .is_ok());
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
            assert!(lot
                .refused(d, Refused::Bulkhead { calls: false }, held(1), t0)
                .is_ok());
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
        lot.call_ended(true, t0);
        assert_eq!(lot.next_due().unwrap().stamp, 1);
        lot.faulted(held(2), t0 + ms(6));
        assert!(lot.next_due().is_none());
        lot.wake(t0 + ms(6) + LOOK_AGAIN);
        assert_eq!(lot.next_due().unwrap().stamp, 2);
        assert_eq!(lot.len(), 0);
    }

    #[test]
    fn one_domain_parks_at_most_half_the_lot_while_others_deliver() {
        let t0 = Instant::now();
        let (sick, other) = (Domain::new(), Domain::new());
        let mut lot = Lot::new(4, true);
        lot.call_ended(true, t0);
        for n in 1..=2 {
            assert!(lot
                .refused(sick, Refused::Breaker(None), held(n), t0)
                .is_ok());
        }
        let Err(given_back) = lot.refused(sick, Refused::Breaker(None), held(3), t0) else {
            panic!("a third record of four places parked for one domain");
        };
        assert_eq!(given_back.stamp, 3);
        assert_eq!(lot.wake(t0), Some(t0 + LOOK_AGAIN), "paused all the same");
        assert!(lot
            .refused(other, Refused::Breaker(None), held(4), t0)
            .is_ok());
        assert_eq!((lot.len(), lot.has_room()), (3, true));
        assert_eq!(share(1), 1, "a lot of one still parks");
    }

    #[test]
    fn one_domain_uses_the_whole_lot_when_nothing_is_delivered() {
        let t0 = Instant::now();
        let sick = Domain::new();
        let mut lot = Lot::new(4, true);
        for n in 1..=4 {
            assert!(lot
                .refused(sick, Refused::Breaker(None), held(n), t0)
                .is_ok());
        }
        assert_eq!((lot.len(), lot.has_room()), (4, false));

        // A delivery long ago is no sign that anyone else is healthy now.
        let mut lot = Lot::new(4, true);
        lot.call_ended(true, t0);
        let later = t0 + DELIVERING;
        for n in 1..=3 {
            assert!(lot
                .refused(sick, Refused::Breaker(None), held(n), later)
                .is_ok());
        }
    }

    #[test]
    fn expiry_takes_the_oldest_of_every_bay_at_once() {
        let t0 = Instant::now();
        let (one, two) = (Domain::new(), Domain::new());
        let mut lot = Lot::new(100, true);
        for n in [1, 3, 5] {
            assert!(lot
                .refused(one, Refused::Breaker(None), held(n), t0)
                .is_ok());
        }
        assert!(lot
            .refused(two, Refused::Breaker(None), held(2), t0)
            .is_ok());
        lot.faulted(held(4), t0);
        let mut gone = Vec::new();
        lot.expire(|record| record.stamp <= 4, |record| gone.push(record.stamp));
        gone.sort_unstable();
        assert_eq!(gone, [1, 2, 3, 4]);
        assert_eq!(
            (lot.len(), lot.domains()),
            (1, 1),
            "an emptied bay is dropped"
        );
        assert!(!lot.has_due(), "nothing left to retry");
        assert_eq!(
            lot.wake(t0),
            Some(t0 + LOOK_AGAIN),
            "no wait for the faulted"
        );
    }

    #[test]
    fn a_bay_paused_while_it_has_its_turn_sends_one_probe() {
        let t0 = Instant::now();
        let d = Domain::new();
        let mut lot = Lot::new(100, true);
        for n in 1..=3 {
            assert!(lot
                .refused(d, Refused::Breaker(Some(ms(1))), held(n), t0)
                .is_ok());
        }
        lot.wake(t0 + ms(1));
        let probe = lot.next_due().unwrap();
        lot.probe_ended(probe.probe_of.unwrap(), true, t0 + ms(1));
        // Open and in turn, the domain refuses a new record, and its pause ends.
        assert!(lot
            .refused(d, Refused::Breaker(Some(ms(1))), held(4), t0 + ms(2))
            .is_ok());
        lot.wake(t0 + ms(3));
        assert_eq!(lot.next_due().unwrap().probe_of, Some(d));
        assert!(lot.next_due().is_none(), "one probe at a time");
    }

    #[test]
    fn a_probe_refused_again_after_a_call_ended_backs_off() {
        let t0 = Instant::now();
        let d = Domain::new();
        let mut lot = Lot::new(100, true);
        let full = Refused::Bulkhead { calls: true };
        assert!(lot.refused(d, full, held(1), t0).is_ok());
        assert!(lot.refused(d, full, held(2), t0).is_ok());
        lot.call_ended(true, t0);
        let probe = lot.next_due().unwrap();
        // The call that ended was to another domain: the probe is refused again.
        assert!(lot.refused(d, full, probe, t0).is_ok());
        lot.call_ended(true, t0);
        assert!(lot.next_due().is_none(), "not opened by every call's end");
        assert_eq!(lot.wake(t0), Some(t0 + SHORTEST));
    }

    #[test]
    fn faulted_records_go_within_a_second_while_a_domain_refuses() {
        let t0 = Instant::now();
        let d = Domain::new();
        let mut lot = Lot::new(100, true);
        assert!(lot.refused(d, Refused::Breaker(None), held(1), t0).is_ok());
        lot.faulted(held(2), t0);
        assert_eq!(lot.wake(t0 + LOOK_AGAIN), Some(t0 + FAULTED_LATEST));
        assert_eq!(
            lot.next_due().unwrap().stamp,
            1,
            "the probe; the faulted wait"
        );
        assert!(lot.next_due().is_none());
        lot.wake(t0 + FAULTED_LATEST);
        assert_eq!(lot.next_due().unwrap().stamp, 2);
    }

    #[test]
    fn without_timers_faulted_records_go_at_once_and_set_no_alarm() {
        let t0 = Instant::now();
        let mut lot = Lot::new(100, false);
        lot.faulted(held(1), t0);
        assert_eq!(lot.wake(t0), None);
        assert_eq!(lot.next_due().unwrap().stamp, 1);
    }
}
