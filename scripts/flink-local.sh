#!/usr/bin/env bash
# A Flink cluster on 127.0.0.1 for running the pipeline with Beam's portable runner:
# one JobManager (REST on 8081), two TaskManagers of one slot each, Beam's Flink job server
# (job API on 8099) and a worker pool for SDK harnesses (50000). Sized for 2 cores and 24 GiB
# shared with other work.
#
#   scripts/flink-local.sh start    fetch what is missing (cached), start what is not running
#   scripts/flink-local.sh stop     end exactly the processes `start` started, by pid
#   scripts/flink-local.sh status   what runs, and the REST API's TaskManager count
#
# Then:  curate run ... --runner FlinkRunner --job_endpoint localhost:8099 --parallelism 2 \
#          --environment_type EXTERNAL --environment_config localhost:50000
# or, each TaskManager starting its own harnesses (Beam's PROCESS environment):
#          --environment_type PROCESS --environment_config '{"command": "RUN/sdk-boot"}'
#
# The pool is pipelines/worker_pool.py, not Beam's worker_pool_main: each TaskManager numbers
# its harnesses from 1, Beam's pool keys them by that number alone, and a stage ending on one
# TaskManager stops the other's harness of the same number, whose task then waits for ever
# (docs/flink.md). Everything is cached under $ALIGN_CURATION_CACHE/flink
# (default ~/.cache/align-curation/flink); the running cluster's pids, logs and config are in
# its run/ folder.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${ALIGN_CURATION_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/align-curation}/flink"
RUN="$CACHE/run"
PYTHON="${CURATE_PYTHON:-$REPO/.venv/bin/python}"

# Flink 1.19 because it is the only Flink flavour of Beam's runner that Maven Central serves
# here (docs/flink.md, "Versions"). No Beam job-server jar is served at all, so the job server
# runs from the runner library and its dependencies; beam-runners-java-job-service is served
# at 2.65.0 but not 2.70.0, and 2.65's classes work with the rest of 2.70 (the equality tests
# are the proof: tests/test_flink.py).
FLINK_VERSION=1.19.3
BEAM_RUNNER_VERSION=2.70.0
BEAM_JOB_SERVICE_VERSION=2.65.0
FLINK_HOME="$CACHE/flink-$FLINK_VERSION"
JOB_SERVER="$CACHE/beam-flink-1.19-job-server-$BEAM_RUNNER_VERSION"

REST_PORT=8081
JOB_PORT=8099
ARTIFACT_PORT=8098
WORKER_POOL_PORT=50000
JM_RPC_PORT=6123
# Per process: 2 TaskManagers x 3 GiB + JobManager 1 GiB + job server 768 MiB heap, under
# 8 GiB of JVMs; the SDK harnesses (Python, children of the TaskManagers) come on top.
TM_PROCESS_SIZE="${FLINK_TM_PROCESS_SIZE:-3072m}"
# Direct memory for the Fn API's gRPC (Netty) buffers, which carry a stage's elements to and
# from the harnesses: with Flink's default (none) a 10^6-candidate text stage failed with
# "OutOfMemoryError: Direct buffer memory" (BENCHMARKS.md, the Flink memory section).
TM_TASK_OFF_HEAP="${FLINK_TM_TASK_OFF_HEAP:-512m}"
JM_PROCESS_SIZE="${FLINK_JM_PROCESS_SIZE:-1024m}"
JOB_SERVER_HEAP="${FLINK_JOB_SERVER_HEAP:-768m}"

COMPONENTS=(jobmanager taskmanager-1 taskmanager-2 jobserver workerpool)

die() { echo "flink-local: $*" >&2; exit 1; }
say() { echo "flink-local: $*"; }

# --- fetching -----------------------------------------------------------------------------

fetch_flink() {
  [ -f "$FLINK_HOME/.complete" ] && return 0
  command -v unzip >/dev/null || die "unzip is needed to unpack Flink's wheel"
  local dl="$CACHE/download" tmp="$FLINK_HOME.partial"
  mkdir -p "$dl"
  say "fetching Flink $FLINK_VERSION from PyPI (apache-flink, apache-flink-libraries; ~230 MB)"
  # bin/ and conf/ come in apache-flink's wheel, lib/ in apache-flink-libraries (an sdist).
  # Unpacked, not installed: apache-flink pins apache-beam<=2.61.
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
    "apache-flink==$FLINK_VERSION" -d "$dl"
  "$PYTHON" -m pip download --quiet --no-deps --no-binary=:all: \
    "apache-flink-libraries==$FLINK_VERSION" -d "$dl"
  rm -rf "$tmp" && mkdir -p "$tmp"
  unzip -q "$dl"/apache_flink-"$FLINK_VERSION"-*.whl 'pyflink/bin/*' 'pyflink/conf/*' -d "$tmp"
  tar xzf "$dl/apache-flink-libraries-$FLINK_VERSION.tar.gz" -C "$tmp" \
    "apache-flink-libraries-$FLINK_VERSION/deps/lib" \
    "apache-flink-libraries-$FLINK_VERSION/deps/bin"
  mkdir -p "$tmp/home"
  mv "$tmp/pyflink/bin" "$tmp/pyflink/conf" "$tmp/home/"
  mv "$tmp/apache-flink-libraries-$FLINK_VERSION/deps/lib" "$tmp/home/lib"
  cp "$tmp/apache-flink-libraries-$FLINK_VERSION/deps/bin/"*.jar "$tmp/home/bin/"
  chmod +x "$tmp/home/bin/"*.sh
  rm -rf "$FLINK_HOME" && mv "$tmp/home" "$FLINK_HOME" && rm -rf "$tmp"
  touch "$FLINK_HOME/.complete"
}

fetch_job_server() {
  [ -f "$JOB_SERVER/.complete" ] && return 0
  command -v mvn >/dev/null || die "Maven (mvn) is needed to fetch Beam's Flink runner"
  say "fetching Beam's Flink 1.19 runner $BEAM_RUNNER_VERSION and its dependencies from Maven"
  mkdir -p "$JOB_SERVER"
  cat >"$JOB_SERVER/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.align-curation</groupId>
  <artifactId>beam-flink-job-server</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.beam</groupId>
      <artifactId>beam-runners-flink-1.19</artifactId>
      <version>$BEAM_RUNNER_VERSION</version>
      <exclusions>
        <exclusion>
          <groupId>org.apache.beam</groupId>
          <artifactId>beam-runners-java-job-service</artifactId>
        </exclusion>
      </exclusions>
    </dependency>
    <dependency>
      <groupId>org.apache.beam</groupId>
      <artifactId>beam-runners-java-job-service</artifactId>
      <version>$BEAM_JOB_SERVICE_VERSION</version>
      <exclusions><exclusion><groupId>*</groupId><artifactId>*</artifactId></exclusion></exclusions>
    </dependency>
    <!-- the job server's log lines, on its stderr -->
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-simple</artifactId>
      <version>2.0.16</version>
    </dependency>
  </dependencies>
</project>
EOF
  rm -rf "$JOB_SERVER/lib"
  (cd "$JOB_SERVER" && mvn -q -B -Dstyle.color=never dependency:copy-dependencies \
    -DoutputDirectory=lib -DincludeScope=runtime) || die "Maven could not fetch the runner"
  touch "$JOB_SERVER/.complete"
}

# --- processes ----------------------------------------------------------------------------

pid_of() { cat "$RUN/$1.pid" 2>/dev/null || true; }

# The marker each process carries on its command line, so a recycled pid is never taken for
# ours.
marker_of() { echo "-Dalign.curation.role=$1"; }

alive() {
  local pid
  pid="$(pid_of "$1")"
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] &&
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$(marker_of "$1")"
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Starts "$@" in a session of its own (so stop can end its children too: a TaskManager's
# SDK harnesses) and records its pid. setsid execs in place: not a group leader here.
launch() {
  local name="$1"
  shift
  setsid "$@" >"$RUN/log/$name.out" 2>&1 </dev/null &
  echo $! >"$RUN/$name.pid"
  say "started $name (pid $!)"
}

write_conf() {
  mkdir -p "$RUN/conf" "$RUN/log" "$RUN/tmp" "$RUN/flink-pids" "$RUN/artifacts"
  cp "$FLINK_HOME/conf/log4j-console.properties" "$RUN/conf/"
  # Flink 1.19's YAML config (conf/config.yaml), everything bound to loopback. The JVM options
  # are the ones Flink's own config.yaml ships for Java 17.
  local opens
  opens="$(grep -E '^\s+all:' "$FLINK_HOME/conf/config.yaml" | head -1 | sed 's/^\s*all:\s*//')"
  cat >"$RUN/conf/config.yaml" <<EOF
env:
  java:
    opts:
      all: $opens
jobmanager:
  bind-host: 127.0.0.1
  rpc:
    address: 127.0.0.1
    port: $JM_RPC_PORT
  memory:
    process:
      size: $JM_PROCESS_SIZE
  execution:
    failover-strategy: region
taskmanager:
  bind-host: 127.0.0.1
  host: 127.0.0.1
  # One slot per TaskManager: two processes give parallelism 2 on 2 cores.
  numberOfTaskSlots: 1
  memory:
    process:
      size: $TM_PROCESS_SIZE
    task:
      off-heap:
        size: $TM_TASK_OFF_HEAP
    # Beam's batch GroupByKey sorts in managed memory and spills; the rest of the heap holds
    # the runner's buffers.
    managed:
      fraction: 0.2
    # The pipeline's batch graph runs all its exchanges at once in each slot: Flink's default
    # (a tenth of the memory) fails it with "Insufficient number of network buffers".
    network:
      min: 256m
      max: 256m
parallelism:
  default: 2
# Beam's runner classes from the TaskManagers' own classpath (launch_flink puts the job
# server's jars on it), not from the job's: Beam releases a stage's SDK harnesses as soon as
# the stage ends when its classes come from a job's class loader, and keeps them for
# --environment_cache_millis (which curate sets on Flink) when they do not. Reused, a
# harness starts once per TaskManager instead of once per stage (~4 s each on 2 cores).
classloader:
  resolve-order: parent-first
rest:
  address: 127.0.0.1
  bind-address: 127.0.0.1
  port: $REST_PORT
io:
  tmp:
    dirs: $RUN/tmp
EOF
}

# A TaskManager (PROCESS environment) or the worker pool (EXTERNAL) starts each SDK harness
# through this executable with the flags of Beam's container contract: pipelines/sdk_boot.py
# fetches the job's options from the runner's provision service and runs the harness in the
# project's venv.
write_sdk_boot() {
  printf '#!/bin/sh\nPYTHONPATH="%s${PYTHONPATH:+:$PYTHONPATH}" exec "%s" -m pipelines.sdk_boot "$@"\n' \
    "$REPO" "$PYTHON" >"$RUN/sdk-boot"
  chmod +x "$RUN/sdk-boot"
}

taskmanagers_registered() {
  curl -sf "http://127.0.0.1:$REST_PORT/taskmanagers" 2>/dev/null |
    "$PYTHON" -c 'import json,sys; print(len(json.load(sys.stdin)["taskmanagers"]))' 2>/dev/null ||
    echo 0
}

# Bounded waits: `tries` one-second polls of `check`, naming `what` and its log on timeout.
wait_for() {
  local what="$1" tries="$2" log="$3"
  shift 3
  local i
  for ((i = 0; i < tries; i++)); do
    "$@" && return 0
    sleep 1
  done
  echo "flink-local: timed out after ${tries}s waiting for $what; last lines of $log:" >&2
  tail -20 "$log" >&2 || true
  return 1
}

two_taskmanagers() { [ "$(taskmanagers_registered)" -ge 2 ]; }
port_open() { ! port_free "$1"; }

start() {
  command -v java >/dev/null || die "java is needed (Java 11 or 17)"
  command -v curl >/dev/null || die "curl is needed (to ask the REST API for the TaskManagers)"
  [ -x "$PYTHON" ] || die "no Python at $PYTHON (set CURATE_PYTHON, or make the venv)"
  "$PYTHON" -c 'import apache_beam' 2>/dev/null || die "$PYTHON has no apache_beam"
  mkdir -p "$RUN"
  fetch_flink
  fetch_job_server
  local started=0 name port ports
  for name in "${COMPONENTS[@]}"; do
    if alive "$name"; then continue; fi
    rm -f "$RUN/$name.pid"
    case "$name" in
      jobmanager) ports="$REST_PORT $JM_RPC_PORT" ;;
      jobserver) ports="$JOB_PORT $ARTIFACT_PORT" ;;
      workerpool) ports=$WORKER_POOL_PORT ;;
      *) ports="" ;;
    esac
    for port in $ports; do
      port_free "$port" ||
        die "port $port is taken by a process this script did not start; stop it first"
    done
  done
  write_conf
  write_sdk_boot
  export FLINK_CONF_DIR="$RUN/conf" FLINK_LOG_DIR="$RUN/log" FLINK_PID_DIR="$RUN/flink-pids"
  # Flink's scripts append HADOOP_CLASSPATH to the JVMs' classpath: the job server's jars
  # but Flink's own and the logging ones (Flink has its own, of its version).
  HADOOP_CLASSPATH="$(find "$JOB_SERVER/lib" -name '*.jar' ! -name 'flink-*' ! -name 'slf4j-*' |
    sort | tr '\n' ':')"
  export HADOOP_CLASSPATH
  if ! alive jobmanager; then
    JVM_ARGS="$(marker_of jobmanager)" launch jobmanager \
      "$FLINK_HOME/bin/jobmanager.sh" start-foreground
    started=1
  fi
  for name in taskmanager-1 taskmanager-2; do
    if ! alive "$name"; then
      JVM_ARGS="$(marker_of "$name")" launch "$name" \
        "$FLINK_HOME/bin/taskmanager.sh" start-foreground
      started=1
    fi
  done
  if ! alive jobserver; then
    # No expansion service: the pipeline has no cross-language transforms.
    launch jobserver java "-Xmx$JOB_SERVER_HEAP" "$(marker_of jobserver)" \
      -cp "$JOB_SERVER/lib/*" org.apache.beam.runners.flink.FlinkJobServerDriver \
      --flink-master="127.0.0.1:$REST_PORT" --job-host=127.0.0.1 --job-port="$JOB_PORT" \
      --artifact-port="$ARTIFACT_PORT" --expansion-port=-1 --artifacts-dir="$RUN/artifacts"
    started=1
  fi
  if ! alive workerpool; then
    # For --environment_type EXTERNAL: harnesses for both TaskManagers (pipelines/worker_pool.py
    # says why not Beam's worker_pool_main).
    PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" launch workerpool "$PYTHON" -m \
      pipelines.worker_pool --port "$WORKER_POOL_PORT" --label="$(marker_of workerpool)"
    started=1
  fi
  wait_for "two TaskManagers in the REST API" 120 "$RUN/log/taskmanager-2.out" \
    two_taskmanagers || { stop; exit 1; }
  wait_for "the job server on $JOB_PORT" 60 "$RUN/log/jobserver.out" \
    port_open "$JOB_PORT" || { stop; exit 1; }
  wait_for "the worker pool on $WORKER_POOL_PORT" 60 "$RUN/log/workerpool.out" \
    port_open "$WORKER_POOL_PORT" || { stop; exit 1; }
  if [ "$started" = 1 ]; then say "running"; else say "already running"; fi
  say "REST http://127.0.0.1:$REST_PORT, job endpoint localhost:$JOB_PORT," \
    "SDK harness command $RUN/sdk-boot (PROCESS) or worker pool localhost:$WORKER_POOL_PORT" \
    "(EXTERNAL); logs in $RUN/log"
}

stop_one() {
  local name="$1" pid i
  pid="$(pid_of "$name")"
  [ -n "$pid" ] || return 0
  if alive "$name"; then
    # The whole session: a TaskManager's SDK harnesses die with it.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 30; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    say "stopped $name (pid $pid)"
  fi
  rm -f "$RUN/$name.pid"
}

stop() {
  local i
  # Clients first, so nothing resubmits to a dying cluster.
  for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
    stop_one "${COMPONENTS[$i]}"
  done
}

status() {
  local name state=0
  for name in "${COMPONENTS[@]}"; do
    if alive "$name"; then
      say "$name running (pid $(pid_of "$name"))"
    else
      say "$name not running"
      state=1
    fi
  done
  say "TaskManagers registered: $(taskmanagers_registered)"
  return "$state"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  fetch) mkdir -p "$RUN" && fetch_flink && fetch_job_server ;;
  *) die "usage: $0 start|stop|status|fetch" ;;
esac
