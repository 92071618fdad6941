# cweb: `make run` starts the embedded server, `make test` runs every suite.
# Both install what is missing first (apt packages when root, then the venv).

PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
# libseccomp2: the workers' seccomp filter (pyseccomp loads it with ctypes).
APT_PACKAGES := gcc libc6-dev libssl-dev libsqlite3-dev libjansson-dev bubblewrap libseccomp2
TEST_APT_PACKAGES := chromium wrk nginx-light
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: install install-test run test lint bench images cluster-up cluster-down clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@scripts/ensure-system.sh $(APT_PACKAGES)
	@# Debian's own python3 ships venv separately (python3-venv); pyenv builds have it.
	@$(PY) -c "import ensurepip" 2>/dev/null || scripts/ensure-system.sh python3-venv
	@test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e .
	@touch $@

install-test: $(TEST_STAMP)

$(TEST_STAMP): $(STAMP) pyproject.toml
	@scripts/ensure-system.sh $(TEST_APT_PACKAGES)
	$(VPY) -m pip install -q -e '.[test]'
	@touch $@

run: install
	$(VPY) -m api

# The suites that touch jobs and state, run a second time with every test
# server on PostgreSQL instead of SQLite (tests/databases.py).
POSTGRES_SUITES := tests/integration/test_jobs.py tests/security/test_job_data.py

test: install-test
	$(VPY) -m ruff check api builder runtime tests bench cweb_testing
	$(VPY) -m pytest -q tests
	CWEB_TEST_DATABASE=postgres $(VPY) -m pytest -q $(POSTGRES_SUITES)

lint: install-test
	$(VPY) -m ruff check api builder runtime tests bench cweb_testing

bench: install-test
	@scripts/ensure-system.sh nginx-light wrk
	$(VPY) bench/run.py

# The container images (cweb-api, cweb-builder, cweb-postgres, cweb-s3 :dev) from this checkout;
# offline, debian:bookworm-slim is made with debootstrap first.
images:
	@# A Docker engine and docker-compose (to run the images with docker-compose.yml).
	scripts/ensure-docker.sh
	scripts/images.sh

# cweb on a single-machine Docker Swarm (cluster/stack.yml): 2 nodes, 2
# builders, PostgreSQL, the object store, one proxy on CWEB_PORT (8080).
# scripts/cluster.sh says what each step does; docs/CLUSTER.md#docker-swarm.
cluster-up:
	scripts/ensure-docker.sh
	scripts/cluster.sh up

# Removes the stack (its volumes too with CWEB_CLUSTER_PURGE=1) and leaves
# the swarm when cluster-up created it.
cluster-down:
	scripts/cluster.sh down

clean:
	rm -rf $(VENV) data
