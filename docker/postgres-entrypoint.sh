#!/bin/sh
# First start: initdb with a password (SCRAM) for POSTGRES_USER and the
# database POSTGRES_DB; every start: postgres listening on every address.
set -eu
USER_NAME="${POSTGRES_USER:-cweb}"
DB_NAME="${POSTGRES_DB:-cweb}"
if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
    PASSWORD="$(cat "$POSTGRES_PASSWORD_FILE")"
else
    PASSWORD="${POSTGRES_PASSWORD:-}"
fi
if [ -z "$PASSWORD" ]; then
    echo "postgres-entrypoint: set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE" >&2
    exit 2
fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile="$(mktemp)"
    printf '%s\n' "$PASSWORD" >"$pwfile"
    initdb -D "$PGDATA" -U "$USER_NAME" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    if [ "$DB_NAME" != postgres ]; then
        echo "CREATE DATABASE \"$DB_NAME\" OWNER \"$USER_NAME\";" | postgres --single -D "$PGDATA" -j postgres >/dev/null
    fi
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' -c max_connections="${POSTGRES_MAX_CONNECTIONS:-200}" "$@"
