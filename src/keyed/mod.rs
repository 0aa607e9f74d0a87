//! A bulkhead and a breaker per key: one sick host, tenant or broker costs only its own calls.
//!
//! A dependency made of many parts fails part by part: one host of an HTTP API, one tenant's
//! database, one Kafka broker. A single breaker opens for all of them when one is sick, and a
//! single compartment fills with calls waiting on the sick one. A [`KeyedLayer`] takes a key from
//! each request with a function of yours, and gives each key its own compartment and breaker,
//! copied from templates (the ordinary [`BulkheadLayer::builder`](crate::bulkhead::BulkheadLayer::builder)
//! and [`BreakerLayer::builder`](crate::breaker::BreakerLayer::builder)):
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, BoxError, Service, ServiceExt, ServiceBuilder};
//! use tanker::breaker::{BreakerLayer, BreakerOpen, BreakerState};
//! use tanker::bulkhead::BulkheadLayer;
//! use tanker::keyed::KeyedLayer;
//!
//! /// An HTTP-like request: the host it goes to, and a path.
//! struct Get {
//!     host: &'static str,
//!     path: &'static str,
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! let per_host = KeyedLayer::builder(|get: &Get| get.host)
//!     .name("http")
//!     .bulkhead(BulkheadLayer::builder().max_in_flight(16))
//!     .breaker(BreakerLayer::builder().consecutive_failures(3).open_for(Duration::from_secs(1)))
//!     .max_keys(256)
//!     .build()?;
//! let hosts = per_host.handle();
//!
//! // The client: `down.example` refuses every connection, the others answer.
//! let client = service_fn(|get: Get| async move {
//!     match get.host {
//!         "down.example" => Err::<String, BoxError>("connection refused".into()),
//!         host => Ok(format!("200 OK from {host}{}", get.path)),
//!     }
//! });
//! let mut http = ServiceBuilder::new().layer(per_host).service(client);
//!
//! for _ in 0..3 {
//!     let get = Get { host: "down.example", path: "/" };
//!     assert!(http.ready().await?.call(get).await.is_err());
//! }
//! // The sick host's breaker is open: its calls fail fast...
//! let err = http.ready().await?.call(Get { host: "down.example", path: "/" }).await.unwrap_err();
//! assert!(err.is::<BreakerOpen>());
//! // ...while another host keeps answering.
//! let ok = http.ready().await?.call(Get { host: "api.example", path: "/users" }).await?;
//! assert_eq!(ok, "200 OK from api.example/users");
//!
//! let down = hosts.get(&"down.example").expect("a key in the table");
//! assert_eq!(down.breaker().state(), BreakerState::Open);
//! assert_eq!(down.breaker().name(), "http/down.example");
//! assert_eq!(hosts.get(&"api.example").unwrap().breaker().state(), BreakerState::Closed);
//! # Ok(())
//! # }
//! ```
//!
//! # Refusals
//!
//! A key's refusals are the ordinary ones: [`BreakerOpen`](crate::breaker::BreakerOpen) when its
//! breaker is open, [`BulkheadFull`](crate::bulkhead::BulkheadFull) when its compartment is
//! full. So [`Rejection::find`](crate::Rejection::find), axum's and tonic's mappings, and the
//! [hand-off](crate::handoff)'s parking treat them as they treat the unkeyed layers'. Two more
//! refusals belong to the table, with the same types:
//!
//! - **The table is full of busy keys.** It holds at most
//!   [`max_keys`](KeyedBuilder::max_keys) keys. A new key takes the place of an idle one (no
//!   call in flight, breaker closed, no probe out), the least recently used as far as a CLOCK
//!   hand can tell (each call sets a bit; the hand clears it as it passes and evicts the first
//!   idle key whose bit is clear). If no key is idle, the call for the new key is shed with
//!   `BulkheadFull` and counted by [`KeyedCounts::refused`]: the bound holds, and existing keys
//!   keep their state. An evicted key forgets its breaker's window: size `max_keys` above the
//!   number of keys in use at once, so that a key failing now and then is not evicted between
//!   its failures before they add up.
//! - **A cluster-wide outage.** With [`max_open(n)`](KeyedBuilder::max_open), up to `n` keys may
//!   be open at once, each on its own. When one more opens, the fault is no longer one host's:
//!   the layer reports one outage ([`KeyedHandle::outage`], the `tanker_keyed_outage` gauge, one
//!   `warn` event) and refuses every key's ordinary calls with `BreakerOpen`, whose
//!   `retry_after` is the last one an open key gave. The open keys keep probing on their own
//!   cool-downs, and the first probe that closes a key ends the outage. Behind a hand-off, an
//!   outage parks every record, as the single breaker does.
//!
//! # Per key
//!
//! Each key's bulkhead and breaker are named `name/label`, where `label` is the key's
//! `Display` (or [`KeyedBuilder::label`]): that name labels their log events and their
//! metrics (`bulkhead="http/down.example"`). [`KeyedHandle::get`] gives a key's
//! [`BulkheadHandle`](crate::bulkhead::BulkheadHandle) and
//! [`BreakerHandle`](crate::breaker::BreakerHandle) (to read its counters, or force its breaker),
//! and [`KeyedHandle::keys`] lists every key with its handles. The table's own metrics (keys,
//! open keys, outage, evictions, refusals) carry the label `keyed` with the layer's name.
//!
//! # Readiness
//!
//! The key is known only in `call`, so `poll_ready` polls the inner service and nothing else,
//! and `call` decides: the key's breaker first, then its compartment, as a breaker over a
//! bulkhead does. A refused call returns an immediately ready error without reaching the inner
//! service. A handle holds nothing between `poll_ready` and `call`, so a clone has nothing to
//! inherit. The inner service is shared by every key; it should be one that is always ready
//! (an HTTP client, a Kafka producer, a `service_fn`), so that per-key back-pressure is the
//! per-key compartment, not the inner service's readiness. Bulkhead templates with a waiting
//! room are refused: a caller would have to wait in `call`.
//!
//! # Cost
//!
//! The table is read-mostly. Each service keeps the immutable map it last saw; a call on a
//! known key checks with one atomic load that the map is still current, hashes the key and
//! looks it up, then pays what a breaker over a bulkhead pays. No lock, no allocation. A new
//! key (or an eviction) takes the table's lock, copies the map with the key added, and
//! publishes the copy; services pick it up on their next call. The key function runs once per
//! call: return something cheap to clone and hash (an id, a `&'static str`, an `Arc<str>`, an
//! `http::uri::Authority`, whose clone counts a reference), not a freshly built `String`, which
//! would cost an allocation per call.
//!
//! A call racing an eviction may still run in the evicted key's old compartment and breaker:
//! the eviction took an idle key, so this happens only to a key that comes back at the very
//! moment it is evicted, and that call is counted in the old state, not lost.
//!
//! # Kafka
//!
//! The key function sees the whole request, so a Kafka leaf that knows each partition's leader
//! can key a record by its leader's broker id: one compartment and one breaker per broker.

mod ejection;
pub mod future;
mod handle;
mod layer;
mod service;
mod table;

pub use self::handle::{KeyHandle, KeyedCounts, KeyedHandle};
pub use self::layer::{KeyedBuilder, KeyedLayer};
pub use self::service::Keyed;
