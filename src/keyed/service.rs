use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::BoxError;
use tower_service::Service;

use super::future::ResponseFuture;
use super::handle::KeyedHandle;
use super::table::{KeyEntry, Snapshot, Table};
use crate::breaker::future::ResponseFuture as BreakerFuture;
use crate::breaker::{Admission, BreakerOpen, BreakerState, Classify, Ticket, Word};
use crate::bulkhead::future::{ResponseFuture as BulkheadFuture, Slot};
use crate::Domain;

/// A bulkhead and a breaker per key, the key taken from each request.
///
/// Built by [`KeyedLayer`](super::KeyedLayer); see the [module docs](super) for the behaviour
/// and an example. Every `Keyed` built from one layer value, and every clone of it, shares one
/// key table.
///
/// `poll_ready` polls the inner service and nothing else: the key is known only in `call`,
/// which decides for that key and, if the key's breaker is open or its compartment full, returns
/// an immediately ready [`BreakerOpen`] or [`BulkheadFull`](crate::bulkhead::BulkheadFull)
/// without calling the inner service. A handle holds no reservation between `poll_ready` and
/// `call`, so a clone has none to inherit.
pub struct Keyed<S, K, F, C> {
    inner: S,
    table: Arc<Table<K, C>>,
    key: F,
    /// The table's map as this handle last saw it; replaced when the table's version moves.
    snapshot: Arc<Snapshot<K, C>>,
}

impl<S, K, F, C> Keyed<S, K, F, C>
where
    K: Hash + Eq + Clone,
    C: Clone,
{
    pub(crate) fn new(inner: S, table: Arc<Table<K, C>>, key: F) -> Self {
        let snapshot = table.snapshot();
        Self {
            inner,
            table,
            key,
            snapshot,
        }
    }

    /// The key table's counters, and each key's bulkhead and breaker.
    pub fn handle(&self) -> KeyedHandle<K, C> {
        KeyedHandle::new(self.table.clone())
    }
}

impl<S, K, F, C> Keyed<S, K, F, C> {
    /// A reference to the inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// A mutable reference to the inner service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the service and returns the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, K, F, C, Request> Service<Request> for Keyed<S, K, F, C>
where
    S: Service<Request>,
    S::Error: Into<BoxError>,
    F: Fn(&Request) -> K,
    K: Hash + Eq + Clone,
    C: Classify<S::Response, BoxError> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    /// Polls the inner service. The key is not known yet, so nothing is decided here.
    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    /// Takes the request's key, finds (or adds) its compartment and breaker, and decides: the
    /// call goes through, or is refused at once with [`BreakerOpen`] (the key's breaker is
    /// open, or more keys are open than the cap) or
    /// [`BulkheadFull`](crate::bulkhead::BulkheadFull) (the key's compartment is full, or the
    /// key is new and the table is full of busy keys).
    ///
    /// # Panics
    ///
    /// Calls the inner service's `call`, which may panic if the inner `poll_ready` was not
    /// called first, as the tower contract allows.
    #[inline]
    fn call(&mut self, request: Request) -> Self::Future {
        let key = (self.key)(&request);
        if !self.table.is_current(&self.snapshot) {
            self.snapshot = self.table.snapshot();
        }
        match self.snapshot.get(&key) {
            Some(entry) => admit(&self.table, entry, &mut self.inner, request),
            None => self.call_new(&key, request),
        }
    }
}

impl<S, K, F, C> Keyed<S, K, F, C>
where
    K: Hash + Eq + Clone,
    C: Clone,
{
    /// A key this handle has not seen: add it to the table (or find it there, added by
    /// another handle since this one's snapshot).
    #[cold]
    fn call_new<Request>(&mut self, key: &K, request: Request) -> ResponseFuture<S::Future, C>
    where
        S: Service<Request>,
    {
        let entry = self.table.insert(key);
        self.snapshot = self.table.snapshot();
        match entry {
            Some(entry) => admit(&self.table, &entry, &mut self.inner, request),
            // The table is full of busy keys: the layer as a whole refused.
            None => shed(self.table.domain),
        }
    }
}

/// Decides a call for one key: its breaker first, then its compartment, as a breaker over a
/// bulkhead does.
#[inline]
fn admit<S, K, C, Request>(
    table: &Table<K, C>,
    entry: &KeyEntry<C>,
    inner: &mut S,
    request: Request,
) -> ResponseFuture<S::Future, C>
where
    S: Service<Request>,
    K: Hash + Eq + Clone,
    C: Clone,
{
    entry.touch();
    let engine = entry.breaker().engine();
    let classifier = entry.breaker().classifier();
    match engine.admit() {
        Admission::Call { generation } => {
            if entry.counted_open() {
                table.mark_closed(entry);
            }
            if table.outage() {
                // A cluster-wide outage: the layer as a whole refuses, as one domain.
                return reject(entry, table.retry_after(), table.domain);
            }
            let Some(future) = call_in(entry, inner, request) else {
                return shed(entry.bulkhead().compartment().domain());
            };
            let word = Word::new(generation, BreakerState::Closed);
            if engine.times_calls() {
                let mut ticket = Ticket::call(engine.clone(), word);
                ticket.start();
                return ResponseFuture::new(BreakerFuture::called(
                    future,
                    ticket,
                    classifier.clone(),
                ));
            }
            ResponseFuture::new(BreakerFuture::closed(
                future,
                engine.clone(),
                word,
                classifier.clone(),
            ))
        }
        other => admit_other(table, entry, other, inner, request),
    }
}

/// Everything but an ordinary call while closed: a probe, a bypass, a rejection.
#[cold]
fn admit_other<S, K, C, Request>(
    table: &Table<K, C>,
    entry: &KeyEntry<C>,
    admission: Admission,
    inner: &mut S,
    request: Request,
) -> ResponseFuture<S::Future, C>
where
    S: Service<Request>,
    K: Hash + Eq + Clone,
    C: Clone,
{
    let engine = entry.breaker().engine();
    match admission {
        Admission::Probe { generation, id } => {
            // Still open until the probe says otherwise; a probe goes out even during an
            // outage, since probes are how an outage ends.
            table.mark_open(entry, None);
            // Taken before the call, so that a probe shed by the compartment gives its place
            // back (the ticket's drop) without an outcome.
            let mut ticket = Ticket::probe(engine.clone(), generation, id);
            let Some(future) = call_in(entry, inner, request) else {
                return shed(entry.bulkhead().compartment().domain());
            };
            ticket.start();
            ResponseFuture::new(BreakerFuture::called(
                future,
                ticket,
                entry.breaker().classifier().clone(),
            ))
        }
        // `admit` handles `Call` itself; were one to come here, it would go through uncounted,
        // as a bypass does.
        Admission::Bypass { .. } | Admission::Call { .. } => {
            table.mark_closed(entry);
            match call_in(entry, inner, request) {
                Some(future) => ResponseFuture::new(BreakerFuture::bypass(future)),
                None => shed(entry.bulkhead().compartment().domain()),
            }
        }
        Admission::Reject { retry_after } => {
            table.mark_open(entry, retry_after);
            reject(entry, retry_after, engine.domain)
        }
    }
}

/// Takes a slot of the key's compartment and calls the inner service, or sheds.
#[inline]
fn call_in<S, C, Request>(
    entry: &KeyEntry<C>,
    inner: &mut S,
    request: Request,
) -> Option<BulkheadFuture<S::Future>>
where
    S: Service<Request>,
{
    let compartment = entry.bulkhead().compartment();
    if !compartment.admit() {
        compartment.record_shed();
        return None;
    }
    // The slot's guard exists before the inner `call` runs: a panic unwinding from it gives the
    // slot back.
    let slot = Slot::taken(compartment.clone());
    Some(BulkheadFuture::called(inner.call(request), slot))
}

#[cold]
fn reject<F, C>(
    entry: &KeyEntry<C>,
    retry_after: Option<std::time::Duration>,
    domain: Domain,
) -> ResponseFuture<F, C> {
    entry.breaker().engine().count_rejection();
    ResponseFuture::new(BreakerFuture::rejected(BreakerOpen::new(
        retry_after,
        domain,
    )))
}

#[cold]
fn shed<F, C>(domain: Domain) -> ResponseFuture<F, C> {
    ResponseFuture::new(BreakerFuture::bypass(BulkheadFuture::shed(domain)))
}

impl<S: Clone, K: Hash + Eq + Clone, F: Clone, C: Clone> Clone for Keyed<S, K, F, C> {
    /// The clone shares the key table; it holds no reservation (no handle does).
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            table: self.table.clone(),
            key: self.key.clone(),
            // A stale snapshot is not passed on: the clone starts with the published one.
            snapshot: self.table.fresh(&self.snapshot),
        }
    }
}

impl<S: fmt::Debug, K, F, C> fmt::Debug for Keyed<S, K, F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyed")
            .field("inner", &self.inner)
            .field("table", &self.table)
            .finish()
    }
}
