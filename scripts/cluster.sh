#!/usr/bin/env bash
# cweb on a Docker Swarm: cluster/stack.yml (docs/CLUSTER.md#docker-swarm).
#
#   scripts/cluster.sh up      swarm init when none is active (single node,
#                              advertised on 127.0.0.1), build the images,
#                              create the secrets (random, once), deploy the
#                              stack, wait until /healthz answers 200 through
#                              the proxy on CWEB_PORT and every service runs
#                              all its replicas
#   scripts/cluster.sh down    remove the stack; leave the swarm only when
#                              `up` created it and no other stack runs on it
#   scripts/cluster.sh status  services and replicas
#
# Env: CWEB_STACK (stack name, default cweb), CWEB_PORT (8080), CWEB_NODES (2),
# CWEB_BUILDERS (2), CWEB_IMAGE_TAG (dev), CWEB_CLUSTER_DIR (default
# data/cluster: secrets/<stack>/ and the record that `up` created the swarm),
# CWEB_CLUSTER_BUILD=0 (use the images as they are), CWEB_CLUSTER_TIMEOUT
# (seconds to wait for health, default 300), CWEB_CLUSTER_PURGE=1 (`down`
# also deletes the stack's volumes, i.e. the database and the object store,
# and its secret files).
set -euo pipefail

cd "$(dirname "$0")/.."
STACK="${CWEB_STACK:-cweb}"
PORT="${CWEB_PORT:-8080}"
TAG="${CWEB_IMAGE_TAG:-dev}"
DIR="${CWEB_CLUSTER_DIR:-data/cluster}"
SECRETS="$DIR/secrets/$STACK"
SWARM_RECORD="$DIR/swarm-created"
TIMEOUT="${CWEB_CLUSTER_TIMEOUT:-300}"

log() { printf 'cluster: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

swarm_state() { docker info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null; }

ensure_swarm() {
    docker info >/dev/null 2>&1 || die "no Docker engine answers (as root: scripts/ensure-docker.sh starts one)"
    local state
    state="$(swarm_state)"
    case "$state" in
        active)
            [ "$(docker info --format '{{.Swarm.ControlAvailable}}')" = true ] \
                || die "this engine is a swarm worker: run cluster-up on a manager"
            ;;
        inactive)
            # 127.0.0.1: a swarm of this machine only; other machines join a
            # swarm advertised on a routable address (docs/CLUSTER.md).
            log "docker swarm init --advertise-addr 127.0.0.1"
            docker swarm init --advertise-addr 127.0.0.1 >/dev/null
            mkdir -p "$DIR"
            # The swarm's node id: `down` leaves only the swarm it created.
            docker info --format '{{.Swarm.NodeID}}' >"$SWARM_RECORD"
            ;;
        *) die "swarm state is '$state': resolve it first (docker info)" ;;
    esac
}

random_hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }

write_secret() {  # name value: a file of the stack's secrets dir, mode 0600, never overwritten
    [ -s "$SECRETS/$1" ] && return 0
    (umask 077 && printf '%s' "$2" >"$SECRETS/$1")
}

ensure_secrets() {
    mkdir -p "$SECRETS"
    chmod 700 "$DIR/secrets" "$SECRETS"
    write_secret api_key "$(random_hex 24)"
    write_secret db_password "$(random_hex 24)"
    write_secret database_url "postgresql://cweb:$(cat "$SECRETS/db_password")@postgres:5432/cweb"
    write_secret s3_access_key "cweb$(random_hex 8)"
    write_secret s3_secret_key "$(random_hex 24)"
    if [ ! -s "$SECRETS/builder_key" ]; then
        # The builders' Ed25519 signing key, made by the builder image's own
        # Python (the host needs no openssl).
        docker run --rm --network none --entrypoint python "cweb-builder:$TAG" -c \
            'from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey as K
from cryptography.hazmat.primitives import serialization as s
print(K.generate().private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()).decode(), end="")' \
            >"$SECRETS/builder_key.tmp"
        chmod 600 "$SECRETS/builder_key.tmp"
        mv "$SECRETS/builder_key.tmp" "$SECRETS/builder_key"
    fi
}

builder_public_key() {  # the base64 raw public half of builder_key (CWEB_TRUSTED_BUILDER_KEYS)
    docker run --rm -i --network none --entrypoint python "cweb-builder:$TAG" -c \
        'import sys
from cryptography.hazmat.primitives import serialization as s
from runtime.provenance import public_b64
print(public_b64(s.load_pem_private_key(sys.stdin.buffer.read(), None).public_key()))' <"$SECRETS/builder_key"
}

stack_env() {
    export CWEB_SECRETS_DIR CWEB_BUILDER_PUBLIC_KEY CWEB_PORT="$PORT" CWEB_IMAGE_TAG="$TAG"
    CWEB_SECRETS_DIR="$(cd "$SECRETS" && pwd)"
    # Not a secret, but kept with its key (k8s/secret.example.yaml reads the same directory).
    write_secret builder_public_key "$(builder_public_key)"
    CWEB_BUILDER_PUBLIC_KEY="$(cat "$SECRETS/builder_public_key")"
}

# Every service of the stack runs as many tasks as it wants.
all_running() {
    local lines
    lines="$(docker service ls --filter "label=com.docker.stack.namespace=$STACK" --format '{{.Replicas}}')"
    [ -n "$lines" ] || return 1
    while read -r replicas; do
        replicas="${replicas%% *}"
        [ "${replicas%/*}" = "${replicas#*/}" ] || return 1
    done <<<"$lines"
}

healthy() {
    # bash's /dev/tcp: no curl needed on the host.
    local answer
    answer="$(timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT && printf 'GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3 && head -c 12 <&3" 2>/dev/null)" || return 1
    [[ "$answer" == *" 200"* ]]
}

explain_failure() {
    docker service ls --filter "label=com.docker.stack.namespace=$STACK" >&2 || true
    docker stack ps --no-trunc --filter desired-state=shutdown --format '{{.Name}} {{.CurrentState}} {{.Error}}' "$STACK" 2>/dev/null | head -n 20 >&2 || true
    local svc
    for svc in $(docker service ls --filter "label=com.docker.stack.namespace=$STACK" --format '{{.Name}}'); do
        log "--- $svc (last lines)"
        docker service logs --no-trunc --tail 30 "$svc" 2>&1 | tail -n 30 >&2 || true
    done
}

# stack rm returns at once; the containers, then the networks, go later.
wait_gone() {
    local start=$SECONDS
    while [ -n "$(docker ps -aq --filter "label=com.docker.stack.namespace=$STACK")" ] \
        || [ -n "$(docker network ls -q --filter "label=com.docker.stack.namespace=$STACK")" ]; do
        [ $((SECONDS - start)) -lt 120 ] || die "the stack's containers or networks are still there after 120 s"
        sleep 1
    done
}

up() {
    ensure_swarm
    # A stack of this name removed a moment ago: its networks must be gone
    # before the new ones of the same name are created.
    docker stack ls --format '{{.Name}}' | grep -qx "$STACK" || wait_gone
    if [ "${CWEB_CLUSTER_BUILD:-1}" != 0 ]; then
        scripts/images.sh
    fi
    ensure_secrets
    stack_env
    log "docker stack deploy $STACK (port $PORT, ${CWEB_NODES:-2} nodes, ${CWEB_BUILDERS:-2} builders)"
    # --resolve-image never: the images are local (no registry to ask).
    docker stack deploy --detach=true --prune --resolve-image never -c cluster/stack.yml "$STACK" >/dev/null
    local start=$SECONDS
    until all_running && healthy; do
        if [ $((SECONDS - start)) -ge "$TIMEOUT" ]; then
            explain_failure
            die "the stack did not become healthy within ${TIMEOUT}s"
        fi
        sleep 1
    done
    log "up in $((SECONDS - start))s: http://127.0.0.1:$PORT (API key: $SECRETS/api_key)"
}

down() {
    if docker stack ls --format '{{.Name}}' 2>/dev/null | grep -qx "$STACK"; then
        log "docker stack rm $STACK"
        docker stack rm "$STACK" >/dev/null
        wait_gone
    fi
    if [ "${CWEB_CLUSTER_PURGE:-0}" = 1 ]; then
        local v
        for v in $(docker volume ls -q --filter "label=com.docker.stack.namespace=$STACK"); do
            docker volume rm "$v" >/dev/null
        done
        rm -rf "$SECRETS"
    fi
    if [ -s "$SWARM_RECORD" ] && [ "$(swarm_state)" = active ] \
        && [ "$(docker info --format '{{.Swarm.NodeID}}')" = "$(cat "$SWARM_RECORD")" ]; then
        if [ -n "$(docker stack ls --format '{{.Name}}')" ]; then
            log "other stacks still run: the swarm cluster-up created stays"
            return 0
        fi
        log "docker swarm leave --force (cluster-up created this swarm)"
        docker swarm leave --force >/dev/null
        rm -f "$SWARM_RECORD"
    fi
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) docker service ls --filter "label=com.docker.stack.namespace=$STACK" ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
