//! Random sequences of polls, calls, completions, cancellations and dropped handles on three
//! clones of one compartment (no waiting room), checked against a reference model after
//! every step.

use proptest::prelude::*;
use tokio::sync::oneshot;
use tokio_test::task;
use tower::{service_fn, Layer};
use tower_test::mock;

use tanker::bulkhead::BulkheadFull;

use crate::support::bulkhead::*;

#[derive(Debug, Clone)]
enum Op {
    PollReady(usize),
    Call(usize),
    Complete(usize),
    Cancel(usize),
    DropService(usize),
}

/// What the model expects of a handle's next `call`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Not polled since its last call: calling would panic.
    Idle,
    /// Polled while a slot looked free: `call` takes one if there still is one.
    Ready,
    /// Polled while full: `call` is shed.
    Shed,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..3usize).prop_map(Op::PollReady),
        3 => (0..3usize).prop_map(Op::Call),
        2 => any::<usize>().prop_map(Op::Complete),
        1 => any::<usize>().prop_map(Op::Cancel),
        1 => (0..3usize).prop_map(Op::DropService),
    ]
}

type Gate = oneshot::Receiver<()>;

proptest! {
    #[test]
    fn counters_follow_a_reference_model(max in 1..4usize, ops in prop::collection::vec(op(), 1..60)) {
        let bulkhead = layer(max);
        let counters = bulkhead.handle();
        let base = bulkhead.layer(service_fn(|gate: Gate| async move {
            gate.await.map_err(|_| "gate dropped")
        }));
        let mut services: Vec<_> = (0..3).map(|_| (mock::Spawn::new(base.clone()), Expect::Idle)).collect();
        let mut calls = Vec::new();
        let (mut in_flight, mut admitted, mut shed) = (0usize, 0u64, 0u64);

        for op in ops {
            match op {
                Op::PollReady(i) => {
                    let (svc, state) = &mut services[i];
                    let ready = svc.poll_ready::<Gate>();
                    prop_assert!(matches!(ready, std::task::Poll::Ready(Ok(()))));
                    if *state == Expect::Idle {
                        *state = if in_flight < max { Expect::Ready } else { Expect::Shed };
                    }
                }
                Op::Call(i) => {
                    let (svc, state) = &mut services[i];
                    if *state == Expect::Idle {
                        continue;
                    }
                    let (tx, rx) = oneshot::channel();
                    let mut fut = task::spawn(svc.call(rx));
                    if *state == Expect::Ready && in_flight < max {
                        prop_assert!(fut.poll().is_pending());
                        admitted += 1;
                        in_flight += 1;
                        calls.push((fut, tx));
                    } else {
                        match fut.poll() {
                            std::task::Poll::Ready(Err(err)) => prop_assert!(err.is::<BulkheadFull>()),
                            other => prop_assert!(false, "expected shed, got {:?}", other.map(|r| r.is_ok())),
                        }
                        shed += 1;
                    }
                    *state = Expect::Idle;
                }
                Op::Complete(k) if !calls.is_empty() => {
                    let (mut fut, tx) = calls.remove(k % calls.len());
                    tx.send(()).expect("call alive");
                    prop_assert!(matches!(fut.poll(), std::task::Poll::Ready(Ok(()))));
                    in_flight -= 1;
                }
                Op::Cancel(k) if !calls.is_empty() => {
                    drop(calls.remove(k % calls.len()));
                    in_flight -= 1;
                }
                Op::Complete(_) | Op::Cancel(_) => continue,
                Op::DropService(i) => {
                    services[i] = (mock::Spawn::new(base.clone()), Expect::Idle);
                }
            }
            prop_assert!(in_flight <= max);
            prop_assert_eq!(counters.counts().in_flight, in_flight);
            prop_assert_eq!(counters.counts().admitted, admitted);
            prop_assert_eq!(counters.counts().shed, shed);
            prop_assert_eq!(counters.counts().waiting, 0);
        }
    }
}
