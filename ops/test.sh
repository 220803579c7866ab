#!/usr/bin/env bash
# Everything CI runs (`make test`): starts the infrastructure the tests need unless it already runs, runs
# every test suite, and stops what it started, also when a test fails or the run is interrupted.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_DIR"
export CARGO_PROFILE=dev CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

CI_DIR=$STATE_DIR/ci
mkdir -p "$CI_DIR"

started=() installs=()
cleanup() {
  local rc=$?
  # Installs still running beside the build (each in a process group of its own).
  for job in "${installs[@]}"; do kill -TERM -- "-${job%%:*}" 2>/dev/null || true; done
  # Service processes (and the chaos suite's forwarders) of an end-to-end test that was interrupted hard (its
  # harness kills them otherwise).
  pkill -KILL -f "^$REPO_DIR/target/debug/(orchestrator|inventory|payment|shipping|tcp-forward)( |$)" 2>/dev/null || true
  for ((i = ${#started[@]} - 1; i >= 0; i--)); do "${started[i]}" stop || true; done
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step() { info "$*"; }

step "formatting"
cargo fmt --all -- --check || die "code is not formatted: run 'cargo fmt --all'"

# What the tests need and this machine lacks (Kafka's jars from Maven Central, the FerretDB build, Prometheus
# from Debian) is installed beside the Rust build: downloads and the Go build overlap the compile. Each writes
# a log of its own, shown if it fails.
background_install() {
  local name=$1 log=$CI_DIR/install-$1.log; shift
  setsid "$@" >"$log" 2>&1 </dev/null &
  installs+=("$!:$name:$log")
}
"$OPS_DIR/kafka/kafka.sh" status >/dev/null 2>&1 || background_install kafka "$OPS_DIR/kafka/kafka.sh" install
if [ -z "${MONGODB_URI:-}" ]; then
  "$OPS_DIR/mongo/mongo.sh" status >/dev/null 2>&1 || background_install ferretdb "$OPS_DIR/mongo/mongo.sh" install
fi
if [ -z "${PROMETHEUS_URL:-}" ]; then
  "$OPS_DIR/prometheus/prometheus.sh" status >/dev/null 2>&1 \
    || background_install prometheus "$OPS_DIR/prometheus/prometheus.sh" install
fi

# Every binary and test executable is built once, with the whole workspace's features, and the tests below
# run those executables directly: `cargo test -p <one package>` would resolve features for that package
# alone and compile a second copy of much of the dependency tree (tokio's test-util, and all above it).
step "build (every binary and test executable, once)"
cargo build --workspace --all-targets --locked --message-format=json-render-diagnostics >"$CI_DIR/build.json"
python3 - "$CI_DIR/build.json" >"$CI_DIR/tests.tsv" <<'PY'
import json, os, sys
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m["profile"]["test"] and m.get("executable"):
        target = m["target"]
        print("\t".join([os.path.dirname(m["manifest_path"]), target["kind"][0], target["name"], m["executable"]]))
PY

for job in "${installs[@]}"; do
  IFS=: read -r pid name log <<<"$job"
  if ! wait "$pid"; then
    tail -n 20 "$log" >&2 || true
    die "installing $name failed (log: $log, last lines above)"
  fi
done
installs=()

# Start only what is not already running, and remember it so that it is stopped at the end.
if "$OPS_DIR/kafka/kafka.sh" status >/dev/null 2>&1; then
  # A Kafka that outlives test runs gathers every run's test topics (thousands of partitions slow it down).
  "$REPO_DIR/target/debug/saga-topics" --delete-test-topics || die "cannot delete the topics of earlier test runs"
else
  started+=("$OPS_DIR/kafka/kafka.sh")
  "$OPS_DIR/kafka/kafka.sh" start
fi
if [ -z "${MONGODB_URI:-}" ]; then
  # A running FerretDB is reused (`start` restarts it first if it is an older build than ops/mongo's).
  "$OPS_DIR/mongo/mongo.sh" status >/dev/null 2>&1 || started+=("$OPS_DIR/mongo/mongo.sh")
  "$OPS_DIR/mongo/mongo.sh" start
fi
# A real Prometheus (Debian package, installed when missing) with the alert rules loaded; the deployment test
# registers its stack in Prometheus's file_sd directory and queries it at PROMETHEUS_URL. A PROMETHEUS_URL
# set by the caller names another Prometheus on this machine (with a `<dir>/*.json` file_sd config).
if [ -z "${PROMETHEUS_URL:-}" ]; then
  "$OPS_DIR/prometheus/prometheus.sh" status >/dev/null 2>&1 \
    || { started+=("$OPS_DIR/prometheus/prometheus.sh"); "$OPS_DIR/prometheus/prometheus.sh" start; }
  export PROMETHEUS_URL=http://127.0.0.1:${PROMETHEUS_PORT:-9090}
fi

# run_tests DIR [TARGET...] [-- ARG...]: runs the test executables of the package in DIR (all of them, or
# the named test targets), one after another, from the package's directory as cargo does.
run_tests() {
  local dir=$REPO_DIR/$1 targets=() args=() ran=0; shift
  while [ $# -gt 0 ]; do
    if [ "$1" = -- ]; then shift; args=("$@"); break; fi
    targets+=("$1"); shift
  done
  while IFS=$'\t' read -r package kind name executable; do
    [ "$package" = "$dir" ] || continue
    [ ${#targets[@]} -eq 0 ] || [[ " ${targets[*]} " == *" $name "* && $kind == test ]] || continue
    echo "    ${dir#"$REPO_DIR"/}: $kind $name" >&2
    (cd "$dir" && "$executable" --quiet "${args[@]}") || die "tests failed: ${dir#"$REPO_DIR"/} $kind $name"
    ran=$((ran + 1))
  done <"$CI_DIR/tests.tsv"
  [ "$ran" -gt 0 ] && { [ ${#targets[@]} -eq 0 ] || [ "$ran" -eq ${#targets[@]} ]; } \
    || die "expected test executables of ${dir#"$REPO_DIR"/} ${targets[*]} in $CI_DIR/tests.tsv, ran $ran"
}

step "lints"
cargo clippy --workspace --all-targets --locked --quiet -- -D warnings

step "monitoring config: promtool check config, check rules and test rules (the alerts fire as their tests expect)"
"$OPS_DIR/prometheus/prometheus.sh" check

step "topics"
"$OPS_DIR/infra.sh" topics

step "unit, contract and crate integration tests (the crates' own tests use the real Kafka and database)"
for package in proto-events saga-defs platform orchestrator participants bench; do run_tests "$package"; done
cargo test --workspace --doc --locked --quiet

step "deterministic simulation: 1,000 seeds of 100 sagas under injected faults, then the invariants"
run_tests simulator -- --nocapture

step "infrastructure tests: Kafka and the database through the client crates"
run_tests tests kafka mongo

step "end-to-end: the real binaries on the real Kafka and database"
run_tests tests saga_outcomes saga_faults saga_live tracing bench_smoke
run_tests tests saga_load -- --nocapture

step "deployment config: docker-compose.yml, Prometheus and Grafana files against the code; metrics of the real binaries; Prometheus scraping them"
run_tests tests deploy_config

step "database restart (alone: it restarts the shared database)"
run_tests tests db_restart

step "chaos: kills, pauses, a partition, broker and database restarts under load (alone, one test at a time: it restarts the shared broker and database)"
run_tests tests chaos -- --test-threads=1 --nocapture

info "all tests passed"
