# cweb builder: gcc, the SDK and `python -m builder` (HTTP on :8081).
# Build with `make images` (creates debian:bookworm-slim offline if needed).
# In compose it runs on an internal network with a read-only root: the
# container is the compile sandbox (hence CWEB_UNSAFE_BUILDS=1: bubblewrap
# needs privileges a container does not have).
FROM debian:bookworm-slim

ARG DEBIAN_FRONTEND=noninteractive
# Not the api image's uid (10001): the compile limit on processes
# (RLIMIT_NPROC) counts every process of the uid on the host, and the
# runtime's workers would use it up; a user of its own is least privilege too.
ARG CWEB_UID=10002
LABEL org.cweb.image="builder"

# Extra CA certificates (git-ignored docker/certs/, filled by `make images`)
# for a TLS-intercepting proxy; the glob keeps the build working without it.
COPY pyproject.toml docker/cert[s] /tmp/extra-ca/
RUN set -eu; \
    apt-get update -qq; \
    apt-get install -y -qq --no-install-recommends \
        ca-certificates python3 python3-venv \
        gcc libc6-dev libssl-dev libsqlite3-dev libjansson-dev; \
    for f in /tmp/extra-ca/*.crt /tmp/extra-ca/*.pem; do \
        [ -f "$f" ] || continue; n="$(basename "$f")"; cp "$f" "/usr/local/share/ca-certificates/extra-${n%.*}.crt"; \
    done; \
    update-ca-certificates >/dev/null; \
    rm -rf /var/lib/apt/lists/* /tmp/extra-ca; \
    useradd --system --uid "$CWEB_UID" --user-group --home-dir /var/lib/cweb --shell /usr/sbin/nologin cweb; \
    install -d -o cweb -g cweb -m 0755 /store /var/lib/cweb

# Dependencies first (a layer that changes only with pyproject.toml), then
# the project itself without touching the network.
COPY pyproject.toml /src/
RUN set -eu; \
    python3 -m venv /opt/cweb; \
    python3 -c "import tomllib; print('\\n'.join(tomllib.load(open('/src/pyproject.toml', 'rb'))['project']['dependencies']))" >/tmp/requirements.txt; \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
        /opt/cweb/bin/pip install -q -r /tmp/requirements.txt "setuptools>=68"; \
    rm -f /tmp/requirements.txt
COPY pyproject.toml README.m[d] /src/
COPY api /src/api
COPY builder /src/builder
COPY runtime /src/runtime
RUN PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INDEX=1 \
        /opt/cweb/bin/pip install -q --no-deps --no-build-isolation /src \
    && rm -rf /src \
    && cd / && /opt/cweb/bin/python -c "import builder.service, builder.local"

ENV PATH=/opt/cweb/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CWEB_BUILDER_HOST=0.0.0.0 \
    CWEB_BUILDER_PORT=8081 \
    CWEB_STORE_DIR=/store \
    CWEB_UNSAFE_BUILDS=1

USER cweb
WORKDIR /var/lib/cweb
EXPOSE 8081
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=5 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8081/healthz', timeout=2).status != 200)"]
CMD ["python", "-m", "builder"]
