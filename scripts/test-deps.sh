#!/usr/bin/env bash
# What the whole test suite needs besides Rust, made ready once:
#   - tansu, the real Kafka-compatible broker of tests/kafka_tansu.rs, built into .tools/ (cached);
#   - redis-server, the real Redis of tests/redis.rs, from Debian's packages if it is missing.
# The tests start and stop their own servers on 127.0.0.1; nothing is left running.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v "${REDIS_SERVER:-redis-server}" >/dev/null 2>&1; then
  echo "installing redis-server (Debian package) for tests/redis.rs"
  as_root apt-get update
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server
fi

scripts/tansu.sh build
