#!/usr/bin/env bash
# The saga services (release builds from target/release), each started in the background with its log and
# pid under $SAGA_STATE_DIR/services.
# Usage: ops/services.sh start|stop|status|endpoints
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# name:port of every service; empty until the services exist.
SERVICES=()
DIR=$STATE_DIR/services

start() {
  mkdir -p "$DIR"
  for entry in "${SERVICES[@]}"; do
    local name=${entry%%:*} port=${entry##*:}
    if pid_alive "$DIR/$name.pid"; then info "$name already running (pid $(cat "$DIR/$name.pid"))"; continue; fi
    require_free_port "$port" "$name" "$(tr a-z- A-Z_ <<<"$name")_PORT"
    [ -x "$REPO_DIR/target/release/$name" ] || die "target/release/$name is missing; run 'make build'"
    [ -f "$DIR/$name.log" ] && mv "$DIR/$name.log" "$DIR/$name.log.1"
    start_daemon "$DIR/$name.pid" "$DIR/$name.log" "$REPO_DIR/target/release/$name"
    wait_until 60 "$DIR/$name.pid" "$DIR/$name.log" "$name" curl -fsS -o /dev/null "http://127.0.0.1:$port/health"
    info "$name ready on 127.0.0.1:$port"
  done
}

stop() {
  for entry in "${SERVICES[@]}"; do stop_pid "$DIR/${entry%%:*}.pid" "${entry%%:*}"; done
}

status() {
  for entry in "${SERVICES[@]}"; do
    local name=${entry%%:*}
    if pid_alive "$DIR/$name.pid"; then echo "$name: running (pid $(cat "$DIR/$name.pid")) on 127.0.0.1:${entry##*:}"
    else echo "$name: stopped"; fi
  done
}

endpoints() {
  echo
  echo "Kafka        127.0.0.1:${KAFKA_PORT:-9092}"
  if [ -n "${MONGODB_URI:-}" ]; then echo "Database     external (MONGODB_URI)"
  else echo "Database     mongodb://127.0.0.1:${MONGO_PORT:-27017} (FerretDB, SQLite backend)"; fi
  for entry in "${SERVICES[@]}"; do printf '%-12s http://127.0.0.1:%s\n' "${entry%%:*}" "${entry##*:}"; done
  echo "Logs         make logs   (files under $STATE_DIR)"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  endpoints) endpoints ;;
  *) die "usage: $0 start|stop|status|endpoints" ;;
esac
