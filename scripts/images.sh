#!/usr/bin/env bash
# Build the cweb images from this checkout: cweb-api:dev, cweb-builder:dev,
# cweb-postgres:dev (the cluster's database), cweb-s3:dev (its object store)
# and cweb-proxy:dev (its entrypoint).
#
# Offline path: when debian:bookworm-slim is not in the local engine (no
# registry can be reached here), make it with debootstrap (bookworm,
# minbase) and `docker import` it. Debian's package mirror is the only thing
# fetched; override it with CWEB_DEBIAN_MIRROR.
#
# The host's CA bundle is copied to docker/certs/ (git-ignored) so that apt
# and pip inside `docker build` trust a TLS-intercepting proxy.
#
# Env: CWEB_IMAGE_TAG (default dev), CWEB_DEBIAN_MIRROR, CWEB_CA_BUNDLE.
set -euo pipefail

cd "$(dirname "$0")/.."
BASE=debian:bookworm-slim
TAG="${CWEB_IMAGE_TAG:-dev}"
MIRROR="${CWEB_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CA_BUNDLE="${CWEB_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
# The daemon here has no buildx plugin next to it: use the classic builder.
export DOCKER_BUILDKIT=0

log() { printf 'images: %s\n' "$*" >&2; }

make_base() {
    if ! command -v debootstrap >/dev/null 2>&1; then
        if [ "$(id -u)" != 0 ]; then
            log "debootstrap is missing: apt-get install debootstrap (as root), then rerun"
            exit 1
        fi
        log "installing debootstrap"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null \
            || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null; }
    fi
    local root
    root="$(mktemp -d /tmp/cweb-bookworm.XXXXXX)"
    # shellcheck disable=SC2064
    trap "rm -rf '$root'" EXIT
    log "debootstrap --variant=minbase bookworm from $MIRROR (about 30 s)"
    debootstrap --variant=minbase bookworm "$root" "$MIRROR" >"$root.log" 2>&1 \
        || { tail -n 40 "$root.log" >&2; rm -f "$root.log"; exit 1; }
    rm -f "$root.log"
    # What the official slim image leaves out: caches, docs, man pages.
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
        "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*
    cat >"$root/etc/apt/sources.list" <<SOURCES
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
SOURCES
    cat >"$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'SLIM'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
SLIM
    tar -C "$root" -c . | docker import -c 'CMD ["bash"]' - "$BASE" >/dev/null
    rm -rf "$root"
    trap - EXIT
    log "created $BASE locally"
}

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    make_base
fi

mkdir -p docker/certs
if [ -r "$CA_BUNDLE" ]; then
    cp "$CA_BUNDLE" docker/certs/host-ca-bundle.crt
fi

build() {
    local file=$1 tag=$2
    local out
    out="$(mktemp /tmp/cweb-image-build.XXXXXX)"
    log "docker build -f $file -t $tag"
    if ! docker build --force-rm -f "$file" -t "$tag" . >"$out" 2>&1; then
        tail -n 60 "$out" >&2
        rm -f "$out"
        exit 1
    fi
    rm -f "$out"
}
# Arguments name the images to build (builder api postgres s3 proxy); none: all of them.
for name in ${*:-builder api postgres s3 proxy}; do
    case "$name" in
        builder | api | postgres | s3 | proxy) build "Dockerfile.$name" "cweb-$name:$TAG" ;;
        *) log "unknown image $name (builder, api, postgres, s3 or proxy)"; exit 2 ;;
    esac
done
# Earlier builds of these images, now untagged.
docker image prune -f --filter label=org.cweb.image >/dev/null
log "built: ${*:-builder api postgres s3 proxy} ($TAG)"
