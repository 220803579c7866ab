#!/usr/bin/env bash
# Loads demo stock through the running inventory service: SKU-1 ... SKU-$SEED_SKUS with $SEED_UNITS units
# available each (defaults 20 and 1000). Setting an amount is idempotent: seeding twice changes nothing.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PORT=${INVENTORY_PORT:-8081}
SKUS=${SEED_SKUS:-20}
UNITS=${SEED_UNITS:-1000}
curl -fsS -o /dev/null "http://127.0.0.1:$PORT/ready" 2>/dev/null \
  || die "the inventory service does not answer on 127.0.0.1:$PORT; start the stack with 'make up' first"
for ((i = 1; i <= SKUS; i++)); do
  curl -fsS -o /dev/null -X PUT "http://127.0.0.1:$PORT/v1/stock/SKU-$i" \
    -H 'content-type: application/json' -d "{\"available\": $UNITS}" \
    || die "setting the stock of SKU-$i failed; see 'make logs'"
done
info "stock set: SKU-1 ... SKU-$SKUS with $UNITS units each"
