#!/usr/bin/env bash
# The saga services (release builds from target/release), each started in the background with its log and
# pid under $SAGA_STATE_DIR/services.
# Usage: ops/services.sh start|stop|status|endpoints
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# name:port of every service, in start order (participants first, so the orchestrator's first commands
# find them consuming). Ports: ORCHESTRATOR_PORT, INVENTORY_PORT, PAYMENT_PORT, SHIPPING_PORT.
SERVICES=(
  "inventory:${INVENTORY_PORT:-8081}"
  "payment:${PAYMENT_PORT:-8082}"
  "shipping:${SHIPPING_PORT:-8083}"
  "orchestrator:${ORCHESTRATOR_PORT:-8080}"
)
DIR=$STATE_DIR/services

start() {
  mkdir -p "$DIR"
  for entry in "${SERVICES[@]}"; do
    local name=${entry%%:*} port=${entry##*:}
    if pid_alive "$DIR/$name.pid"; then
      # A binary rebuilt since the service started (make up after a code change) replaces the running one.
      if [ "$REPO_DIR/target/release/$name" -nt "$DIR/$name.pid" ]; then
        info "$name was rebuilt since it started; restarting it"
        stop_pid "$DIR/$name.pid" "$name"
      else
        info "$name already running (pid $(cat "$DIR/$name.pid"))"; continue
      fi
    fi
    require_free_port "$port" "$name" "$(tr a-z- A-Z_ <<<"$name")_PORT"
    [ -x "$REPO_DIR/target/release/$name" ] || die "target/release/$name is missing; run 'make build'"
    [ -f "$DIR/$name.log" ] && mv "$DIR/$name.log" "$DIR/$name.log.1"
    HTTP_ADDR="127.0.0.1:$port" start_daemon "$DIR/$name.pid" "$DIR/$name.log" "$REPO_DIR/target/release/$name"
    wait_until 60 "$DIR/$name.pid" "$DIR/$name.log" "$name" curl -fs -o /dev/null "http://127.0.0.1:$port/ready"
    info "$name ready on 127.0.0.1:$port"
  done
}

stop() {
  # The orchestrator first, so that it sends no more commands to stopped participants.
  for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do
    local name=${SERVICES[i]%%:*}
    stop_pid "$DIR/$name.pid" "$name"
  done
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
