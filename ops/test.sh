#!/usr/bin/env bash
# Everything CI runs (`make test`): starts the infrastructure the tests need unless it already runs, runs
# every test suite, and stops what it started, also when a test fails or the run is interrupted.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_DIR"
export CARGO_PROFILE=dev CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

started=()
cleanup() {
  local rc=$?
  # Service processes (and the chaos suite's forwarders) of an end-to-end test that was interrupted hard (its
  # harness kills them otherwise).
  pkill -KILL -f "^$REPO_DIR/target/debug/(orchestrator|inventory|payment|shipping|tcp-forward)( |$)" 2>/dev/null || true
  for ((i = ${#started[@]} - 1; i >= 0; i--)); do "${started[i]}" stop || true; done
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Start only what is not already running, and remember it so that it is stopped at the end.
"$OPS_DIR/kafka/kafka.sh" status >/dev/null 2>&1 || { started+=("$OPS_DIR/kafka/kafka.sh"); "$OPS_DIR/kafka/kafka.sh" start; }
if [ -z "${MONGODB_URI:-}" ]; then
  "$OPS_DIR/mongo/mongo.sh" status >/dev/null 2>&1 || { started+=("$OPS_DIR/mongo/mongo.sh"); "$OPS_DIR/mongo/mongo.sh" start; }
fi
# A real Prometheus (Debian package, installed when missing) with the alert rules loaded; the deployment test
# registers its stack in Prometheus's file_sd directory and queries it at PROMETHEUS_URL. A PROMETHEUS_URL
# set by the caller names another Prometheus on this machine (with a `<dir>/*.json` file_sd config).
if [ -z "${PROMETHEUS_URL:-}" ]; then
  "$OPS_DIR/prometheus/prometheus.sh" status >/dev/null 2>&1 \
    || { started+=("$OPS_DIR/prometheus/prometheus.sh"); "$OPS_DIR/prometheus/prometheus.sh" start; }
  export PROMETHEUS_URL=http://127.0.0.1:${PROMETHEUS_PORT:-9090}
fi

step() { info "$*"; }

step "build (all targets, once)"
cargo build --workspace --all-targets --locked

step "formatting and lints"
cargo fmt --all -- --check || die "code is not formatted: run 'cargo fmt --all'"
cargo clippy --workspace --all-targets --locked --quiet -- -D warnings

step "monitoring config: promtool check config, check rules and test rules (the alerts fire as their tests expect)"
"$OPS_DIR/prometheus/prometheus.sh" check

step "topics"
"$OPS_DIR/infra.sh" topics

step "unit, contract and crate integration tests (the crates' own tests use the real Kafka and database)"
cargo test --workspace --exclude tests --exclude simulator --locked --quiet

step "deterministic simulation: 1,000 seeds of 100 sagas under injected faults, then the invariants"
cargo test -p simulator --locked --quiet -- --nocapture

step "infrastructure tests: Kafka and the database through the client crates"
cargo test -p tests --locked --quiet --test kafka --test mongo

step "end-to-end: the real binaries on the real Kafka and database"
cargo test -p tests --locked --quiet --test saga_outcomes --test saga_faults --test saga_live --test tracing \
  --test bench_smoke
cargo test -p tests --locked --quiet --test saga_load -- --nocapture

step "deployment config: docker-compose.yml, Prometheus and Grafana files against the code; metrics of the real binaries; Prometheus scraping them"
cargo test -p tests --locked --quiet --test deploy_config

step "database restart (alone: it restarts the shared database)"
cargo test -p tests --locked --quiet --test db_restart

step "chaos: kills, pauses, a partition, broker and database restarts under load (alone, one test at a time: it restarts the shared broker and database)"
cargo test -p tests --locked --quiet --test chaos -- --test-threads=1 --nocapture

info "all tests passed"
