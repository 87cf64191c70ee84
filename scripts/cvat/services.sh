#!/usr/bin/env bash
# Starts/stops a real CVAT installed under $CVAT_CACHE (docs/cvat.md), every service on 127.0.0.1, pids and logs under $CVAT_CACHE.
#   bash scripts/cvat/services.sh start      PostgreSQL, 2 redis-servers, OPA, CVAT's server (:7000), one rqworker
#   bash scripts/cvat/services.sh start-ui   the React UI's webpack dev server (:3000, proxies /api to :7000)
#   bash scripts/cvat/services.sh stop | status
# The CVAT server calls the nuclio dashboard at CVAT_NUCLIO_HOST:CVAT_NUCLIO_PORT (default 127.0.0.1:8070), which
# `adaptiveclick serve` answers; credentials for it go in the netrc file $CVAT_CACHE/netrc (never in the host).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/env.sh"
RUN="$CVAT_CACHE/run"
LOGS="$CVAT_CACHE/logs"
PG="$CVAT_CACHE/pg"
mkdir -p "$RUN" "$LOGS"
export CVAT_NUCLIO_HOST="${CVAT_NUCLIO_HOST:-127.0.0.1}" CVAT_NUCLIO_PORT="${CVAT_NUCLIO_PORT:-8070}"
export CVAT_NUCLIO_INVOKE_METHOD="${CVAT_NUCLIO_INVOKE_METHOD:-dashboard}"
# The dashboard's basic auth, for CVAT's server process only: requests reads NETRC, so the password never sits in
# CVAT_NUCLIO_HOST (CVAT echoes that URL in every error its clients see). Made once, random, mode 600.
if [ ! -e "$CVAT_CACHE/netrc" ]; then
  (umask 077 && printf 'machine %s login cvat password %s\n' "$CVAT_NUCLIO_HOST" \
    "$(head -c 18 /dev/urandom | base64 | tr -d '/+=')" > "$CVAT_CACHE/netrc")
fi
export NETRC="$CVAT_CACHE/netrc"
export DJANGO_SECRET_KEY="${DJANGO_SECRET_KEY:-adaptiveclick-local-cvat-not-a-secret}"

alive() { [ -e "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }
launch() {  # name, command... : start in the background once, in CVAT's base directory (Docker's WORKDIR)
  local name=$1; shift
  alive "$name" && return 0
  # setsid: its own process group (stop ends it with its children); the pid file holds that process's own pid.
  (cd "$CVAT_SRC" && exec setsid bash -c 'echo $$ >"$0"; exec "$@"' "$RUN/$name.pid" "$@" >>"$LOGS/$name.log" 2>&1 &)
  for _ in $(seq 50); do [ -s "$RUN/$name.pid" ] && return 0; sleep 0.1; done
}
wait_port() {  # port, seconds
  for _ in $(seq "$2"); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 1; done
  echo "nothing listens on 127.0.0.1:$1 after $2 s (logs: $LOGS)" >&2; return 1
}
pg() { runuser -u postgres -- "$@"; }

start_postgres() {
  if [ ! -e "$PG/data/PG_VERSION" ]; then
    mkdir -p "$PG/data" "$PG/run" && chown -R postgres: "$PG"
    pg initdb -D "$PG/data" -U postgres -A trust >/dev/null
  fi
  if ! pg pg_ctl -D "$PG/data" status >/dev/null 2>&1; then
    pg pg_ctl -D "$PG/data" -l "$PG/postgres.log" -w start \
      -o "-p $CVAT_PG_PORT -k $PG/run -c listen_addresses=127.0.0.1 -c shared_buffers=64MB" >/dev/null
  fi
  pg psql -h "$PG/run" -p "$CVAT_PG_PORT" -qtAc "SELECT 1 FROM pg_roles WHERE rolname='cvat'" | grep -q 1 \
    || pg psql -h "$PG/run" -p "$CVAT_PG_PORT" -qc "CREATE USER cvat WITH PASSWORD 'cvat' CREATEDB"
  pg psql -h "$PG/run" -p "$CVAT_PG_PORT" -qtAc "SELECT 1 FROM pg_database WHERE datname='cvat'" | grep -q 1 \
    || pg psql -h "$PG/run" -p "$CVAT_PG_PORT" -qc "CREATE DATABASE cvat OWNER cvat"
}

start_deps() {
  start_postgres
  # Redis for RQ and caches (in-memory) and a second plain one where CVAT expects kvrocks (a Django cache only).
  mkdir -p "$CVAT_CACHE/redis-inmem" "$CVAT_CACHE/redis-ondisk"
  launch redis-inmem redis-server --bind 127.0.0.1 --port "$CVAT_REDIS_INMEM_PORT" --save "" \
    --dir "$CVAT_CACHE/redis-inmem" --maxmemory 512mb
  launch redis-ondisk redis-server --bind 127.0.0.1 --port "$CVAT_REDIS_ONDISK_PORT" \
    --dir "$CVAT_CACHE/redis-ondisk" --maxmemory 512mb --maxmemory-policy allkeys-lru
  launch opa "$CVAT_VENV/bin/python" "$HERE/opa_server.py" --src "$CVAT_SRC" --opa-lib "$CVAT_CACHE/opa/lib" \
    --port "$CVAT_OPA_PORT"
  wait_port "$CVAT_REDIS_INMEM_PORT" 20 && wait_port "$CVAT_REDIS_ONDISK_PORT" 20 && wait_port "$CVAT_OPA_PORT" 60
}

start() {
  start_deps
  launch server "$CVAT_VENV/bin/python" manage.py runserver "127.0.0.1:$CVAT_PORT" --noreload
  launch rqworker "$CVAT_VENV/bin/python" manage.py rqworker --worker-class cvat.rqworker.DefaultWorker \
    chunks import export annotation webhooks notifications quality_reports cleaning consensus
  wait_port "$CVAT_PORT" 180
}

start_ui() {
  # webpack's dev server; the UI's own default API host is localhost:7000 (proxied under /api).
  NODE_OPTIONS="--max-old-space-size=${CVAT_UI_NODE_MB:-6144}" YARN_ENABLE_TELEMETRY=0 \
    launch ui node "$CVAT_CACHE/npm/node_modules/@yarnpkg/cli-dist/bin/yarn.js" run start:cvat-ui
  wait_port "$CVAT_UI_PORT" 300
}

stop() {
  for name in ui rqworker server opa redis-ondisk redis-inmem; do
    if alive "$name"; then kill -- "-$(cat "$RUN/$name.pid")" 2>/dev/null || kill "$(cat "$RUN/$name.pid")"; fi
    rm -f "$RUN/$name.pid"
  done
  [ -e "$PG/data/PG_VERSION" ] && pg pg_ctl -D "$PG/data" -m fast stop >/dev/null 2>&1 || true
}

status() {
  for name in redis-inmem redis-ondisk opa server rqworker ui; do
    if alive "$name"; then echo "$name: running (pid $(cat "$RUN/$name.pid"))"; else echo "$name: stopped"; fi
  done
  pg pg_ctl -D "$PG/data" status >/dev/null 2>&1 && echo "postgres: running" || echo "postgres: stopped"
}

case "${1:-}" in
  start-deps) start_deps ;;
  start) start ;;
  restart-server)  # after a change of CVAT_NUCLIO_* (the server reads them at start)
    for name in server rqworker; do alive "$name" && kill -- "-$(cat "$RUN/$name.pid")"; rm -f "$RUN/$name.pid"; done
    sleep 2; start ;;
  start-ui) start_ui ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|start-ui|start-deps|restart-server|stop|status" >&2; exit 2 ;;
esac
