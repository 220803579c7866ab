#!/usr/bin/env bash
# Shows the last lines of every log of the local stack; FOLLOW=1 follows them.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
mapfile -t logs < <(find "$STATE_DIR" -maxdepth 3 -name '*.log' -newermt '-7 days' 2>/dev/null | grep -v install.log | sort)
[ "${#logs[@]}" -gt 0 ] || die "no logs under $STATE_DIR yet; start the stack with 'make up'"
if [ "${FOLLOW:-0}" = 1 ]; then exec tail -n 20 -F "${logs[@]}"; fi
tail -n "${LINES:-30}" "${logs[@]}"
