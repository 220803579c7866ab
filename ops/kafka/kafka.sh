#!/usr/bin/env bash
# A real single-node Apache Kafka broker (KRaft combined mode) built from Maven Central artifacts.
# Usage: ops/kafka/kafka.sh install|start|stop|restart|status
# Settings: KAFKA_VERSION (4.1.1), KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (9093),
#           KAFKA_HEAP (512m), KAFKA_START_TIMEOUT seconds (90), KAFKA_TOPIC_PARTITIONS (6), SAGA_STATE_DIR.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

KAFKA_VERSION=${KAFKA_VERSION:-4.1.1}
PORT=${KAFKA_PORT:-9092}
CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-9093}
HEAP=${KAFKA_HEAP:-512m}
START_TIMEOUT=${KAFKA_START_TIMEOUT:-90}
HOME_DIR=$STATE_DIR/kafka
LIBS=$HOME_DIR/libs-$KAFKA_VERSION
DATA=$HOME_DIR/data
LOG=$HOME_DIR/kafka.log
PIDFILE=$HOME_DIR/kafka.pid
PROPS=$HOME_DIR/server.properties

install() {
  [ -f "$LIBS/.complete" ] && return 0
  need "${JAVA_HOME:+$JAVA_HOME/bin/}java" "install OpenJDK 17 (Debian: apt-get install openjdk-17-jdk-headless)"
  need mvn "install Maven (Debian: apt-get install maven)"
  local major
  major=$("${JAVA_HOME:+$JAVA_HOME/bin/}java" -XshowSettings:properties -version 2>&1 | sed -n 's/.*java.specification.version = \([0-9]*\).*/\1/p')
  [ "${major:-0}" -ge 17 ] || die "Kafka $KAFKA_VERSION needs Java 17 or newer, found Java ${major:-unknown}; set JAVA_HOME"
  info "installing Kafka $KAFKA_VERSION from Maven Central into $LIBS"
  rm -rf "$LIBS.tmp" && mkdir -p "$LIBS.tmp"
  if ! mvn -q -B -f "$OPS_DIR/kafka/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
      dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$LIBS.tmp" >"$HOME_DIR/install.log" 2>&1; then
    tail -n 20 "$HOME_DIR/install.log" >&2
    die "Maven could not fetch Kafka $KAFKA_VERSION (log: $HOME_DIR/install.log); check that Maven Central is reachable"
  fi
  ls "$LIBS.tmp"/kafka_2.13-*.jar >/dev/null 2>&1 || die "Maven finished but no kafka_2.13 jar arrived in $LIBS.tmp"
  touch "$LIBS.tmp/.complete" && mv "$LIBS.tmp" "$LIBS"
}

JAVA=("${JAVA_HOME:+$JAVA_HOME/bin/}java" -Xms128m "-Xmx$HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20
  "-Dlog4j2.configurationFile=$OPS_DIR/kafka/log4j2.properties" -cp "$LIBS/*")

configure() {
  mkdir -p "$DATA"
  sed -e "s|@PORT@|$PORT|g" -e "s|@CONTROLLER_PORT@|$CONTROLLER_PORT|g" -e "s|@DATA_DIR@|$DATA|g" \
      -e "s|@PARTITIONS@|${KAFKA_TOPIC_PARTITIONS:-6}|g" "$OPS_DIR/kafka/server.properties.in" >"$PROPS"
}

# Formats the storage once; a data dir that has files but no valid meta.properties is corrupt.
format_once() {
  if [ -f "$DATA/meta.properties" ]; then
    grep -q '^cluster.id=' "$DATA/meta.properties" \
      || die "Kafka state in $DATA is corrupt (meta.properties has no cluster.id); run 'make clean' to start over"
    return 0
  fi
  if [ -n "$(ls -A "$DATA" 2>/dev/null)" ]; then
    die "Kafka state in $DATA is corrupt (files but no meta.properties); run 'make clean' to start over"
  fi
  local cluster_id
  cluster_id=$("${JAVA[@]}" kafka.tools.StorageTool random-uuid 2>>"$LOG") || die "cannot generate a Kafka cluster id; see $LOG"
  "${JAVA[@]}" kafka.tools.StorageTool format -c "$PROPS" -t "$cluster_id" --standalone >>"$LOG" 2>&1 \
    || die "formatting Kafka storage in $DATA failed; see $LOG"
}

ready() { port_open 127.0.0.1 "$PORT" && grep -q 'Kafka Server started' "$LOG"; }

start() {
  if pid_alive "$PIDFILE"; then
    info "Kafka already running (pid $(cat "$PIDFILE")) on 127.0.0.1:$PORT"
    return 0
  fi
  require_free_port "$PORT" Kafka KAFKA_PORT
  require_free_port "$CONTROLLER_PORT" "the Kafka controller" KAFKA_CONTROLLER_PORT
  install
  configure
  format_once
  [ -f "$LOG" ] && mv "$LOG" "$LOG.1"
  info "starting Kafka $KAFKA_VERSION on 127.0.0.1:$PORT (log: $LOG)"
  start_daemon "$PIDFILE" "$LOG" "${JAVA[@]}" kafka.Kafka "$PROPS"
  wait_until "$START_TIMEOUT" "$PIDFILE" "$LOG" Kafka ready
  info "Kafka ready on 127.0.0.1:$PORT"
}

stop() { stop_pid "$PIDFILE" Kafka; }

status() {
  if pid_alive "$PIDFILE"; then echo "kafka: running (pid $(cat "$PIDFILE")) on 127.0.0.1:$PORT"
  else echo "kafka: stopped"; return 1; fi
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) status ;;
  *) die "usage: $0 install|start|stop|restart|status" ;;
esac
