#!/usr/bin/env bash
# The local infrastructure as one unit: Kafka, the database, and the saga topics.
# Usage: ops/infra.sh up|down|topics|status
#   up      starts what is not running (reusing what is), then creates missing topics (idempotent)
#   down    stops what it started; data stay in the state dir
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

topics() {
  info "ensuring the saga topics (idempotent; ${KAFKA_TOPIC_PARTITIONS:-6} partitions each)"
  (cd "$REPO_DIR" && cargo run --quiet --profile "${CARGO_PROFILE:-release}" -p platform --bin saga-topics) \
    || die "could not create the Kafka topics (see above); is Kafka up? try 'make infra-down infra-up'"
}

case "${1:-}" in
  up)
    "$OPS_DIR/kafka/kafka.sh" start
    "$OPS_DIR/mongo/mongo.sh" start
    topics
    ;;
  down)
    "$OPS_DIR/mongo/mongo.sh" stop
    "$OPS_DIR/kafka/kafka.sh" stop
    ;;
  topics) topics ;;
  status)
    "$OPS_DIR/kafka/kafka.sh" status || true
    "$OPS_DIR/mongo/mongo.sh" status || true
    ;;
  *) die "usage: $0 up|down|topics|status" ;;
esac
