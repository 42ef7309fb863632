#!/usr/bin/env bash
# A PostgreSQL server on localhost for the tuning tests (as root): install, start, stop. Idempotent.
#   scripts/postgres.sh start    install postgresql (apt) if missing, start a cluster on port 5433,
#                                create role and database peft_bench (password peft_bench), and
#                                role and database peft_bench_pw with a password found in no other
#                                name (the tests grep a tune folder for it: tests/test_tune.py)
#   scripts/postgres.sh stop
#   scripts/postgres.sh url      the URL the tests use (also $PEFT_BENCH_TEST_POSTGRES)
set -euo pipefail
PORT=5433
CLUSTER=peftbench
URL="postgresql://peft_bench:peft_bench@127.0.0.1:${PORT}/peft_bench"

install() {
  command -v pg_createcluster >/dev/null && ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 && return
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
}

version() { ls /usr/lib/postgresql | sort -n | tail -1; }

start() {
  install
  local v; v=$(version)
  if ! pg_lsclusters -h | awk '{print $2}' | grep -qx "$CLUSTER"; then
    pg_createcluster "$v" "$CLUSTER" -p "$PORT" >/dev/null
  fi
  pg_ctlcluster "$v" "$CLUSTER" start 2>/dev/null || true
  for _ in $(seq 1 30); do
    su postgres -c "psql -p $PORT -tAc 'select 1'" >/dev/null 2>&1 && break
    sleep 1
  done
  su postgres -c "psql -p $PORT -tAc \"select 1 from pg_roles where rolname='peft_bench'\"" | grep -q 1 ||
    su postgres -c "psql -p $PORT -c \"create role peft_bench login password 'peft_bench'\"" >/dev/null
  su postgres -c "psql -p $PORT -tAc \"select 1 from pg_database where datname='peft_bench'\"" | grep -q 1 ||
    su postgres -c "psql -p $PORT -c 'create database peft_bench owner peft_bench'" >/dev/null
  su postgres -c "psql -p $PORT -tAc \"select 1 from pg_roles where rolname='peft_bench_pw'\"" | grep -q 1 ||
    su postgres -c "psql -p $PORT -c \"create role peft_bench_pw login password 'Zx7-hush-91q'\"" >/dev/null
  su postgres -c "psql -p $PORT -tAc \"select 1 from pg_database where datname='peft_bench_pw'\"" | grep -q 1 ||
    su postgres -c "psql -p $PORT -c 'create database peft_bench_pw owner peft_bench_pw'" >/dev/null
  echo "$URL"
}

case "${1:-start}" in
  start) start ;;
  stop) pg_ctlcluster "$(version)" "$CLUSTER" stop ;;
  url) echo "$URL" ;;
  *) echo "usage: $0 start|stop|url" >&2; exit 2 ;;
esac
