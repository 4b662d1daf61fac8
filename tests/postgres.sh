#!/usr/bin/env bash
# Start or stop a throwaway PostgreSQL cluster for the tests, from Debian's server packages.
#
#   eval "$(tests/postgres.sh start)"   # exports PIERONE_TEST_POSTGRES_URL and PIERONE_TEST_PGDATA
#   tests/postgres.sh stop "$PIERONE_TEST_PGDATA"
#
# The cluster listens on 127.0.0.1 on a free port, trusts local connections, skips fsync (it
# is thrown away), and lives in a temporary directory that `stop` deletes.
set -euo pipefail

as_postgres() {
    if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi
}

case "${1:-}" in
start)
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
        echo "postgres.sh: PostgreSQL server binaries not found (apt-get install postgresql)" >&2
        exit 1
    fi
    dir=$(mktemp -d /tmp/pierone-pg.XXXXXX)
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$dir"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    as_postgres "$bin/initdb -D $dir/data -U postgres -A trust -E UTF8 --no-locale --no-sync" >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; exit 1; }
    as_postgres "$bin/pg_ctl -D $dir/data -l $dir/log -w -o '-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300' start" >/dev/null \
        || { cat "$dir/log" >&2; exit 1; }
    echo "$port" >"$dir/port"
    echo "export PIERONE_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:$port/postgres"
    echo "export PIERONE_TEST_PGDATA=$dir"
    ;;
pause)
    # Stop the server but keep its data, to test what happens while the database is down.
    dir=${2:?usage: postgres.sh pause DIR}
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    as_postgres "$bin/pg_ctl -D $dir/data -m immediate -w stop" >/dev/null
    ;;
resume)
    dir=${2:?usage: postgres.sh resume DIR}
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    port=$(cat "$dir/port")
    as_postgres "$bin/pg_ctl -D $dir/data -l $dir/log -w -o '-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300' start" >/dev/null
    ;;
stop)
    dir=${2:?usage: postgres.sh stop DIR}
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    as_postgres "$bin/pg_ctl -D $dir/data -m immediate stop" >/dev/null 2>&1 || true
    rm -rf "$dir"
    ;;
*)
    echo "usage: postgres.sh start | stop DIR | pause DIR | resume DIR" >&2
    exit 2
    ;;
esac
