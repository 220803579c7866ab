#!/usr/bin/env bash
# The document database. When MONGODB_URI is set, that server (a real MongoDB) is used and this script
# neither installs nor starts anything. Otherwise it builds FerretDB from the Go module proxy and runs it
# with the SQLite backend (MongoDB wire protocol) on 127.0.0.1:27017.
# Usage: ops/mongo/mongo.sh install|start|stop|restart|status
# Settings: MONGODB_URI, FERRETDB_VERSION (v1.24.2), MONGO_PORT (27017), FERRETDB_DEBUG_PORT (8088),
#           MONGO_START_TIMEOUT seconds (60), SAGA_STATE_DIR.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

VERSION=${FERRETDB_VERSION:-v1.24.2}
PORT=${MONGO_PORT:-27017}
DEBUG_PORT=${FERRETDB_DEBUG_PORT:-8088}
START_TIMEOUT=${MONGO_START_TIMEOUT:-60}
HOME_DIR=$STATE_DIR/ferretdb
# The suffix marks our build: upstream with the patches below (a new suffix when they change, so that an
# older build is replaced).
BIN=$HOME_DIR/bin/ferretdb-$VERSION-p8
DATA=$HOME_DIR/data
LOG=$HOME_DIR/ferretdb.log
PIDFILE=$HOME_DIR/ferretdb.pid

external() { [ -n "${MONGODB_URI:-}" ]; }
# The URI without credentials, for messages.
redacted_uri() { sed -E 's#//[^@/]*@#//***@#' <<<"$MONGODB_URI"; }

# `go install` of FerretDB builds a binary that panics at start: the generated build/version/version.txt
# is not part of the module (FerretDB issue #2982). So build from a writable copy of the module after
# writing that file.
#
# Two patches are applied to the SQLite backend:
# 1. It creates its `_id` index on `_ferretdb_sjson->"_id"` but filters on `_ferretdb_sjson->'$._id'`, which
#    SQLite does not match to the index, so every find, update and delete by `_id` scans the whole
#    collection (the PostgreSQL backend has the same mismatch, FerretDB issue #4646). Filtering on the indexed
#    expression gives the same results and uses the index.
# 2. It narrows a query to one `_id` in SQL only when the filter is exactly `{_id: <string or ObjectId>}`;
#    a filter with more conditions, such as `{_id, version}` (a write conditional on a version), reads the
#    whole collection. The patched backend narrows any filter with such an `_id` condition at its top level
#    to that document in SQL; the handlers apply the whole filter to what the backend returns anyway (every
#    command does, pushdown or not), so the results are the same. `explain` shows it: `filterPushdown` true
#    and the SQLite plan searching by the `_id` index (tests/tests/mongo.rs checks both patches that way).
#
# And two that only remove work a release build does for nothing (found with a CPU profile of FerretDB under
# `make bench`, `go tool pprof` on its debug port; together 13% of its CPU):
# 3. Every SQL statement is logged at debug level through `logger.With(args).DebugContext(...)`; `With`
#    formats the arguments (the whole document as JSON) before the level is checked, so it ran at WARN too
#    (6% of FerretDB's CPU). The patched calls check the level first.
# 4. `resource.Track`, a leak detector for debug builds, records a stack trace and sets a finalizer on every
#    connection, transaction and cursor in release builds too (7%). The patched Track and Untrack do nothing
#    unless FerretDB is built with its debug tag.
#
# And one bug fix:
# 5. An `update` command keeps each statement's query open (a SQLite connection of a pool of 100) until the
#    whole command is done (`defer` in its loop over the statements): one command with 100 or more
#    statements, or a few large ones at once, waits forever for a connection, and with it every client of the
#    database. The patched loop closes each statement's query when the statement is done
#    (tests/tests/mongo.rs sends 250 statements in one command).
#
# And one that removes a read from the most frequent write (ops/mongo/replace-in-place.patch):
# 6. A replacement of one document chosen by `_id` and equality conditions on other top-level fields (a
#    write conditional on a version, as the saga store writes every transition) read the document, decoded
#    it, checked the filter in Go and then wrote it: half of an update's CPU was that read. The patched
#    `update` first tries one SQL `UPDATE ... WHERE` the `_id` and each condition, with its stored type
#    (string, ObjectId, integer), hold in place and the stored document differs from the new one; when no row
#    changes (no such document, another stored type such as a double or an array, an identical replacement)
#    it runs the usual path, which applies the full MongoDB rules. tests/tests/mongo.rs checks those rules on
#    both paths.
#
# And one that queues writers instead of putting them to sleep (ops/mongo/serialize-writes.patch):
# 7. SQLite has one writer per database. FerretDB's pool lets up to 100 connections write at once, so a
#    write that finds the database locked goes to SQLite's busy handler, which sleeps 1, 2, 5, 10, 15, 20,
#    25 ms and more between tries, however soon the lock is free: with a few writers at once the cores sat
#    idle while writes slept (the stack used about 80% of the CPU at saturation). The patched database
#    handle runs its writes (each statement outside a transaction, and each transaction) one at a time in
#    arrival order; reads are unaffected (WAL mode). Measured under `make bench` at C=16: 118 -> 164 sagas/s,
#    p99 541 -> 231 ms (bench/results/20261127T122116Z.md, 20261127T122801Z.md).
#
# And one that commits the writes that queue up together (ops/mongo/group-commit.patch):
# 8. With 7, each transaction still ended with a commit of its own (a write-ahead log append and an fsync,
#    about 0.12 ms of FerretDB's CPU per write and the database's whole write turn). The patched queue lets
#    the writer whose turn it is run every transaction waiting (up to 64) in one SQLite transaction, each in
#    a savepoint of its own (one that fails is rolled back to it and gets its own error), commit once, and
#    only then answer each: every acknowledged write is durable as before, a lone write runs as before.
#    `/debug/metrics` counts the transactions (ferretdb_sqldb_queued_writes_total) and the commits they took
#    (ferretdb_sqldb_queued_commits_total); tests/tests/mongo.rs checks that writes at once keep their own
#    outcomes and share commits. Measured with 8 writers of one database: 2,900 -> 3,900 writes/s, FerretDB
#    CPU 0.29 -> 0.25 ms per write; see README's Performance section for the stack.
install() {
  [ -x "$BIN" ] && return 0
  need go "install Go 1.22 or newer (Debian: apt-get install golang)"
  info "building FerretDB $VERSION from the Go module proxy (about a minute)"
  mkdir -p "$HOME_DIR/bin"
  local src=$HOME_DIR/src-$VERSION dir
  dir=$(cd "$HOME_DIR" && GOFLAGS=-mod=mod go mod download -json "github.com/FerretDB/FerretDB@$VERSION" 2>"$HOME_DIR/install.log" \
        | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p') || true
  [ -n "$dir" ] && [ -d "$dir" ] || { tail -n 5 "$HOME_DIR/install.log" >&2;
    die "cannot download FerretDB $VERSION (log: $HOME_DIR/install.log); check that the Go module proxy is reachable"; }
  rm -rf "$src" && cp -r "$dir" "$src" && chmod -R u+w "$src"
  echo "$VERSION" >"$src/build/version/version.txt"
  need patch "install patch (Debian: apt-get install patch)"
  local name
  for name in replace-in-place serialize-writes group-commit; do
    patch -d "$src" -p1 --batch --forward --quiet <"$(dirname "${BASH_SOURCE[0]}")/$name.patch" >>"$HOME_DIR/install.log" 2>&1 \
      || die "cannot apply ops/mongo/$name.patch to FerretDB $VERSION (log: $HOME_DIR/install.log)"
  done
  local metadata=$src/internal/backends/sqlite/metadata/metadata.go
  sed -i "s|IDColumn = DefaultColumn + \"->'\$._id'\"|IDColumn = DefaultColumn + \`->\"_id\"\`|" "$metadata"
  grep -q 'IDColumn = DefaultColumn + `->"_id"`' "$metadata" \
    || die "cannot apply the _id index patch to FerretDB $VERSION ($metadata changed); see ops/mongo/mongo.sh"
  # Two places make that choice: the query, and `explain` (which then shows the SQLite plan by `_id`).
  local collection=$src/internal/backends/sqlite/collection.go
  sed -i 's|if params.Filter.Len() == 1 {|if params.Filter.Len() >= 1 { // patched: an _id condition among others|' "$collection"
  [ "$(grep -c 'if params.Filter.Len() >= 1 { // patched' "$collection")" = 2 ] \
    || die "cannot apply the _id pushdown patch to FerretDB $VERSION ($collection changed); see ops/mongo/mongo.sh"
  local n
  n=$(grep -l 'l.With(fields...).DebugContext' "$src"/internal/util/fsql/*.go | wc -l)
  sed -i -E 's/^([[:space:]]*)([a-z]+)\.l\.With\(fields\.\.\.\)\.DebugContext\((.*)\)$/\1if \2.l.Enabled(ctx, slog.LevelDebug) { \2.l.With(fields...).DebugContext(\3) } \/\/ patched/' \
    "$src"/internal/util/fsql/*.go
  [ "$n" -ge 2 ] && [ "$(grep -h 'DebugContext' "$src"/internal/util/fsql/*.go | grep -vc '// patched$')" = 0 ] \
    || die "cannot apply the debug logging patch to FerretDB $VERSION (internal/util/fsql changed); see ops/mongo/mongo.sh"
  local resource=$src/internal/util/resource/resource.go
  sed -i -E 's/^func (Track|Untrack)\(obj any, token \*Token\) \{$/&\n\tif !debugbuild.Enabled { return } \/\/ patched/' "$resource"
  [ "$(grep -c 'if !debugbuild.Enabled { return } // patched' "$resource")" = 2 ] \
    || die "cannot apply the resource tracking patch to FerretDB $VERSION ($resource changed); see ops/mongo/mongo.sh"
  local update=$src/internal/handler/msg_update.go
  sed -i -E 's/^([[:space:]]*)result, err := common\.UpdateDocument\(ctx, c, "update", iter, &u\)$/&\n\1closer.Close() \/\/ patched/' "$update"
  [ "$(grep -c '^[[:space:]]*closer.Close() // patched$' "$update")" = 1 ] \
    || die "cannot apply the update statements patch to FerretDB $VERSION ($update changed); see ops/mongo/mongo.sh"
  if ! (cd "$src" && go build -trimpath -tags ferretdb_no_postgresql -o "$BIN.tmp" ./cmd/ferretdb) >>"$HOME_DIR/install.log" 2>&1; then
    tail -n 20 "$HOME_DIR/install.log" >&2
    die "building FerretDB $VERSION failed (log: $HOME_DIR/install.log)"
  fi
  mv "$BIN.tmp" "$BIN" && rm -rf "$src"
}

ready() { port_open 127.0.0.1 "$PORT" && curl -fsS -o /dev/null "http://127.0.0.1:$DEBUG_PORT/debug/readyz"; }

# outdated: true when the running FerretDB is not this script's build (an earlier patch level).
outdated() { [ "$(readlink "/proc/$(cat "$PIDFILE")/exe" 2>/dev/null)" != "$(readlink -f "$BIN" 2>/dev/null || echo "$BIN")" ]; }

start() {
  if external; then info "using the database at $(redacted_uri) (MONGODB_URI); nothing to start"; return 0; fi
  if pid_alive "$PIDFILE" && outdated; then
    info "FerretDB (pid $(cat "$PIDFILE")) runs another build than $(basename "$BIN"): restarting it (data are kept)"
    install
    stop_pid "$PIDFILE" FerretDB
  fi
  if pid_alive "$PIDFILE"; then
    info "FerretDB already running (pid $(cat "$PIDFILE")) on 127.0.0.1:$PORT"
    return 0
  fi
  require_free_port "$PORT" "the database" MONGO_PORT
  require_free_port "$DEBUG_PORT" "FerretDB's debug endpoint" FERRETDB_DEBUG_PORT
  need curl "install curl (Debian: apt-get install curl)"
  install
  mkdir -p "$DATA" "$HOME_DIR/state"
  [ -w "$DATA" ] || die "database state dir $DATA is not writable; fix its permissions or run 'make clean'"
  [ -f "$LOG" ] && mv "$LOG" "$LOG.1"
  info "starting FerretDB $VERSION (SQLite backend) on 127.0.0.1:$PORT (log: $LOG)"
  # Go's collector runs when the heap has grown by GOGC percent: at Go's default of 100 it took about a fifth
  # of FerretDB's CPU under load. At 400, FerretDB used 20% less CPU per saga (29.0 -> 23.3 ms at
  # concurrency 16) for 95 MiB of memory instead of 73 (GOGC=off with GOMEMLIMIT=256MiB: the same CPU, 288 MiB).
  export GOGC=${FERRETDB_GOGC:-400}
  start_daemon "$PIDFILE" "$LOG" "$BIN" --handler=sqlite --sqlite-url="file:$DATA/" --state-dir="$HOME_DIR/state" \
    --listen-addr="127.0.0.1:$PORT" --debug-addr="127.0.0.1:$DEBUG_PORT" --telemetry=disable --log-format=json --log-level=WARN
  wait_until "$START_TIMEOUT" "$PIDFILE" "$LOG" FerretDB ready
  info "FerretDB ready on 127.0.0.1:$PORT"
}

stop() {
  if external; then info "the database at $(redacted_uri) is not ours to stop"; return 0; fi
  stop_pid "$PIDFILE" FerretDB
}

status() {
  if external; then echo "database: external at $(redacted_uri)"; return 0; fi
  if pid_alive "$PIDFILE"; then
    echo "database: FerretDB running (pid $(cat "$PIDFILE")) on 127.0.0.1:$PORT"
    outdated && echo "database: that is an older build than $(basename "$BIN"); 'make infra-up' restarts it"
    return 0
  fi
  echo "database: stopped"; return 1
}

case "${1:-}" in
  install) external || install ;;
  start) start ;;
  stop) stop ;;
  restart)
    external && die "MONGODB_URI points at an external database; restart it with its own tools"
    stop; start ;;
  status) status ;;
  *) die "usage: $0 install|start|stop|restart|status" ;;
esac
