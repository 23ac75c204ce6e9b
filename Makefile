# Concordia: `make run` starts the platform on its embedded default; `make test` runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# DiracX (GPL-3.0) runs in a venv of its own as a separate process: the project never imports it.
DIRACX_VENV := .venv-diracx
DIRACX_STAMP := $(DIRACX_VENV)/.installed
# The Rucio server of the data-lake tests runs in a venv of its own too: the project talks to
# it over its REST API only.
RUCIO_VENV := .venv-rucio
RUCIO_STAMP := $(RUCIO_VENV)/.installed
# bubblewrap runs jobs in their images; mmdebstrap builds images; squashfs-tools and umoci
# write the SquashFS (Apptainer) and OCI forms of each image; slirp4netns (with iproute2 to
# block routes) gives build steps a network namespace of their own, outbound only.
SYSTEM_PACKAGES := bubblewrap mmdebstrap squashfs-tools umoci slirp4netns iproute2
# podman (with runc: crun refuses cgroup v1 hybrid mode) is the third runtime of jobs in images.
# docker-registry is the OCI registry grid images are pushed to in tests (htpasswd from
# apache2-utils for its auth), skopeo reads what was pushed back independently.
# nginx with its WebDAV module serves the https (WebDAV) RSE of the Rucio of the tests, on a
# self-signed certificate made by openssl.
TEST_PACKAGES := chromium podman runc docker-registry skopeo apache2-utils \
	nginx libnginx-mod-http-dav-ext openssl

.PHONY: run test test-fast lint system-deps test-deps diracx-venv rucio-venv bench bench-quick clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# System packages: installed through apt-get where we are root, else named exactly.
system-deps:
	@scripts/ensure-packages "images are built with mmdebstrap and jobs run in them with bubblewrap" $(SYSTEM_PACKAGES)

$(DIRACX_STAMP): scripts/diracx-requirements.txt
	$(PYTHON) -m venv $(DIRACX_VENV)
	$(DIRACX_VENV)/bin/pip install --quiet --upgrade pip
	$(DIRACX_VENV)/bin/pip install --quiet -r scripts/diracx-requirements.txt
	touch $(DIRACX_STAMP)

# The real DiracX server the tests of tests/diracx start (scripts/diracx-server).
diracx-venv: $(DIRACX_STAMP)

$(RUCIO_STAMP): scripts/rucio-requirements.txt
	$(PYTHON) -m venv $(RUCIO_VENV)
	$(RUCIO_VENV)/bin/pip install --quiet --upgrade pip
	$(RUCIO_VENV)/bin/pip install --quiet -r scripts/rucio-requirements.txt
	touch $(RUCIO_STAMP)

# The real Rucio server the data-lake tests start (scripts/rucio-server).
rucio-venv: $(RUCIO_STAMP)

test-deps: system-deps diracx-venv rucio-venv
	@scripts/ensure-packages "the browser tests drive Debian's chromium; podman runs jobs in tests; grid images are pushed to a real registry; nginx serves the WebDAV RSE of the data-lake tests" $(TEST_PACKAGES)
	@scripts/ensure-postgresql

run: $(STAMP) system-deps
	$(BIN)/concordia serve

# The whole suite on the embedded SQLite (on several pytest workers) and, side by side with
# it, the tests marked sql again on PostgreSQL: what depends on the database engine.
test: $(STAMP) test-deps
	scripts/run-tests $(BIN)

# Before every commit: the unit tests and the in-process ones that start no real part (no
# image build, job, server or browser), in well under a minute on two cores.
test-fast: $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider -n 2 -m "not real" tests

lint: $(STAMP)
	$(BIN)/ruff check concordia tests bench
	$(BIN)/ruff format --check concordia tests bench
	$(BIN)/mypy

# Every benchmark, in this order: `make bench` to its end (figures), `make bench-quick` at
# small sizes in seconds each (CI: a change that breaks one fails there).
BENCHES = local_overhead jobs_query pages submission_page image_lookup image_rebuild job_start grid_image isolation bearer_auth diracx_submit reconcile datalake datalake_local load

bench: $(STAMP) system-deps diracx-venv rucio-venv
	set -e; for b in $(BENCHES); do echo "== bench/$$b.py"; $(BIN)/python bench/$$b.py; done

bench-quick: $(STAMP) system-deps diracx-venv rucio-venv
	set -e; for b in $(BENCHES); do echo "== bench/$$b.py --quick"; $(BIN)/python bench/$$b.py --quick; done

clean:
	rm -rf $(VENV) $(DIRACX_VENV) $(RUCIO_VENV) .pytest_cache .mypy_cache .ruff_cache
