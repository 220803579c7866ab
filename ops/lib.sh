# Shared helpers for the ops scripts. Source it; do not run it.
# Every failure ends with one line saying what is wrong and what to do (die), never a stack trace.

OPS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$OPS_DIR/.." && pwd)
# One git-ignored directory holds every download, build, data file, log and pid of the local stack.
STATE_DIR=${SAGA_STATE_DIR:-$REPO_DIR/.local}
mkdir -p "$STATE_DIR"
STATE_DIR=$(cd "$STATE_DIR" && pwd)

die() { echo "error: $*" >&2; exit 1; }
info() { echo "==> $*" >&2; }

# need CMD "what to do": fail with a clear line when a prerequisite is missing.
need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found on PATH: $2"; }

# port_open HOST PORT: true when something accepts TCP connections there.
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# pid_alive PIDFILE: true when the pid in PIDFILE names a running process.
pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# port_owner PORT: "pid/name" of the process listening on PORT, when ss can tell.
port_owner() {
  command -v ss >/dev/null 2>&1 || return 0
  ss -ltnpH "sport = :$1" 2>/dev/null | sed -n 's/.*users:(("\([^"]*\)",pid=\([0-9]*\).*/\2\/\1/p' | head -n 1
}

# require_free_port PORT NAME VAR: fail clearly when PORT is taken by a process that is not ours.
require_free_port() {
  if port_open 127.0.0.1 "$1"; then
    local owner; owner=$(port_owner "$1")
    die "port $1 (for $2) is already in use${owner:+ by pid $owner}; stop that process or set $3 to a free port"
  fi
}

# wait_until SECONDS PIDFILE LOG NAME CHECK...: polls CHECK until it succeeds, the process dies, or the
# deadline passes. On failure prints the log's tail and one line saying what to do.
wait_until() {
  local timeout=$1 pidfile=$2 log=$3 name=$4; shift 4
  local deadline=$((SECONDS + timeout))
  until "$@"; do
    if ! pid_alive "$pidfile"; then
      tail -n 20 "$log" >&2 || true
      die "$name exited during start-up; its log is $log (last lines above)"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail -n 20 "$log" >&2 || true
      die "$name did not become ready within ${timeout}s; see $log, then 'make infra-down' and retry"
    fi
    sleep 0.2
  done
}

# stop_pid PIDFILE NAME: SIGTERM, wait up to 30 s, then SIGKILL; removes the pid file.
stop_pid() {
  local pidfile=$1 name=$2
  if ! pid_alive "$pidfile"; then rm -f "$pidfile"; return 0; fi
  local pid; pid=$(cat "$pidfile")
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + 30))
  while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then
    info "$name (pid $pid) did not stop within 30s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  fi
  rm -f "$pidfile"
  info "$name stopped"
}

# start_daemon PIDFILE LOG CMD...: runs CMD detached in its own session, output appended to LOG.
start_daemon() {
  local pidfile=$1 log=$2; shift 2
  mkdir -p "$(dirname "$log")"
  setsid "$@" >>"$log" 2>&1 </dev/null &
  echo $! >"$pidfile"
}
