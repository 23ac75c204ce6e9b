# Concordia: `make run` starts the platform on its embedded default; `make test` runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SYSTEM_PACKAGES := bubblewrap

.PHONY: run test lint check system-deps bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# System packages: installed through apt-get where we are root, else named exactly.
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing:$$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null || \
	      { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; }; \
	  else \
	    echo "missing system packages:$$missing"; \
	    echo "install them with: sudo apt-get install$$missing"; \
	    echo "(without bubblewrap, jobs run as plain processes, NOT isolated)"; \
	  fi; \
	fi

run: $(STAMP) system-deps
	$(BIN)/concordia serve

test: $(STAMP) system-deps
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check concordia tests bench
	$(BIN)/ruff format --check concordia tests bench
	$(BIN)/mypy

bench: $(STAMP) system-deps
	$(BIN)/python bench/local_overhead.py
	$(BIN)/python bench/jobs_query.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
