#!/usr/bin/env bash
# Model-checks tanker's lock-free protocols with loom: every interleaving of the bulkhead's
# admission, the breaker's state word and window, the hand-off's counters and doorbell, and the
# wake marks of the hand-off worker's calls in flight, up to a bound on
# preemptions (LOOM_MAX_PREEMPTIONS, 3 by default: a few minutes on two cores).
#
# The library is built with `--cfg tanker_loom` (src/sync.rs swaps the atomics) into its own
# target directory, so that the flag does not invalidate the normal build. Only the `loom_`
# unit tests run in that build: loom's atomics work only inside `loom::model`.
set -euo pipefail
cd "$(dirname "$0")/.."
export LOOM_MAX_PREEMPTIONS=${LOOM_MAX_PREEMPTIONS:-3}
RUSTFLAGS="--cfg tanker_loom ${RUSTFLAGS:-}" \
  cargo test --release --no-default-features --lib --target-dir "${CARGO_TARGET_DIR:-target}/loom" -- loom_
