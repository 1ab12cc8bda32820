# Gatehouse: `make run` starts everything, `make test` runs the whole suite.
# Both create .venv at the repository root with Python 3.11+ when it is missing and
# (re)install the pinned requirements only when a requirements file changed.

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV        := .venv
VENV_PY     := $(VENV)/bin/python
RUN_STAMP   := $(VENV)/.requirements.stamp
TEST_STAMP  := $(VENV)/.requirements-test.stamp
# The interpreter that creates the venv: the first of these that is 3.11 or newer.
PYTHON_CANDIDATES ?= python3 python3.13 python3.12 python3.11
PYTEST_ARGS ?=
PIP := $(VENV_PY) -m pip --disable-pip-version-check
CHECK_VENV = $(VENV_PY) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
  echo "error: $(VENV) uses Python $$($(VENV_PY) --version 2>&1); 3.11+ is needed: make clean, then retry" >&2; exit 1; }

.PHONY: help run test bench clean venv

help:
	@echo "make run    - install into .venv and start Gatehouse (dashboard, engine, worker, beat)"
	@echo "make test   - install test requirements into .venv and run pytest (PYTEST_ARGS=... to pass options)"
	@echo "make bench  - run the benchmarks in bench/"
	@echo "make clean  - remove .venv, caches and collected static files (keeps ./data)"

venv: $(VENV_PY)

$(VENV_PY):
	@py=""; for c in $(PYTHON_CANDIDATES); do \
	  if command -v "$$c" >/dev/null 2>&1 && "$$c" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then py="$$c"; break; fi; \
	done; \
	if [ -z "$$py" ]; then \
	  echo "error: Gatehouse needs Python 3.11 or newer; none of '$(PYTHON_CANDIDATES)' is (found: $$(python3 --version 2>&1 || echo no python3))." >&2; \
	  echo "       On Debian/Ubuntu: apt-get install python3 python3-venv (Debian 12 / Ubuntu 24.04 ship 3.11+)." >&2; \
	  exit 1; \
	fi; \
	echo "Creating $(VENV) with $$py ($$($$py --version 2>&1))"; \
	if ! "$$py" -m venv $(VENV); then \
	  rm -rf $(VENV); \
	  echo "error: '$$py -m venv' failed; on Debian/Ubuntu: apt-get install python3-venv" >&2; \
	  exit 1; \
	fi
	@$(CHECK_VENV)

$(RUN_STAMP): requirements.txt | $(VENV_PY)
	@$(CHECK_VENV)
	$(PIP) install -q -r requirements.txt
	@touch $@

$(TEST_STAMP): requirements.txt requirements-test.txt | $(VENV_PY)
	@$(CHECK_VENV)
	$(PIP) install -q -r requirements-test.txt
	@touch $@ $(RUN_STAMP)

run: $(RUN_STAMP)
	$(VENV_PY) -m manager.launcher

# pytest's own exit status is make's: 1 for failures, 5 when no test ran (both fail).
# sslyze needs an older cryptography than Gatehouse: it gets a venv of its own.
SSLYZE_VENV  := .venv-sslyze
SSLYZE_STAMP := $(SSLYZE_VENV)/.requirements.stamp

$(SSLYZE_STAMP): requirements-sslyze.txt | $(VENV_PY)
	"$$($(VENV_PY) -c 'import sys, os; print(os.path.join(sys.base_prefix, "bin", "python3"))')" -m venv $(SSLYZE_VENV)
	$(SSLYZE_VENV)/bin/python -m pip --disable-pip-version-check install -q -r requirements-sslyze.txt
	@touch $@

test: $(TEST_STAMP) $(SSLYZE_STAMP)
	SSLYZE=$(CURDIR)/$(SSLYZE_VENV)/bin/sslyze $(VENV_PY) -m pytest $(PYTEST_ARGS)

# Needs nginx-light and wrk (apt-get install nginx-light wrk) and redis-server.
bench: $(TEST_STAMP)
	$(VENV_PY) bench/reload_latency.py
	$(VENV_PY) bench/engine_wrk.py --access-log
	$(VENV_PY) bench/engine_latency.py
	$(VENV_PY) bench/engine_stream.py
	$(VENV_PY) bench/engine_idle.py
	$(VENV_PY) bench/engine_tls.py
	$(VENV_PY) bench/engine_cache.py
	$(VENV_PY) bench/engine_compress.py
	$(VENV_PY) bench/engine_lb.py
	$(VENV_PY) bench/engine_ratelimit.py --redis $${REDIS_URL:-redis://127.0.0.1:6379/0}

clean:
	rm -rf $(VENV) $(SSLYZE_VENV) .pytest_cache staticfiles
	find . -path ./data -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
