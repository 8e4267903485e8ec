#!/bin/sh
# Start PostgreSQL; on the first start create the cluster, the user and the database.
#   POSTGRES_PASSWORD  password of POSTGRES_USER (required on the first start)
#   POSTGRES_USER      (evcharge)   POSTGRES_DB (evcharge)   PGDATA (the data folder)
set -eu
BIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
USER_NAME="${POSTGRES_USER:-evcharge}"
DB_NAME="${POSTGRES_DB:-evcharge}"
SOCK=/run/evcharge-postgres

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
        echo "evcharge-postgres: set POSTGRES_PASSWORD for the first start" >&2
        exit 2
    fi
    pwfile="$(mktemp)"
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    "$BIN/initdb" -D "$PGDATA" -U "$USER_NAME" --pwfile="$pwfile" -E UTF8 --locale=C \
        --auth-local=trust --auth-host=scram-sha-256 >&2
    rm -f "$pwfile"
    echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
    echo "CREATE DATABASE \"$DB_NAME\";" \
        | "$BIN/postgres" --single -D "$PGDATA" -j template1 >/dev/null
    echo "evcharge-postgres: created database $DB_NAME for $USER_NAME" >&2
fi
exec "$BIN/postgres" -D "$PGDATA" -c listen_addresses='*' -k "$SOCK" "$@"
