# The two commands: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python

.PHONY: demo test lint typecheck pytest bench soak clean check-mosquitto check-postgres check-chromium

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.demo-installed: pyproject.toml $(BIN)/activate
	$(PY) -m pip install --quiet -e '.[demo]'
	touch $@

$(VENV)/.test-installed: pyproject.toml $(BIN)/activate
	$(PY) -m pip install --quiet -e '.[test,demo,postgres]'
	touch $@

demo: $(VENV)/.demo-installed
	$(BIN)/jaa-gateway demo

check-mosquitto:
	@if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    echo "mosquitto not found: installing it with apt-get"; \
	    (apt-get install -y mosquitto || (apt-get update && apt-get install -y mosquitto)); \
	  else \
	    echo "error: the tests need a 'mosquitto' binary. Install it: sudo apt-get install -y mosquitto" >&2; \
	    exit 1; \
	  fi; \
	fi

# The PostgreSQL tests start their own throwaway cluster (tests/support/postgres.py) from the
# server binaries; Debian installs them off PATH, under /usr/lib/postgresql/<version>/bin.
check-postgres:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    echo "PostgreSQL server binaries not found: installing them with apt-get"; \
	    (apt-get install -y postgresql || (apt-get update && apt-get install -y postgresql)); \
	  else \
	    echo "error: the tests need the PostgreSQL server binaries (initdb, pg_ctl). Install them: sudo apt-get install -y postgresql" >&2; \
	    exit 1; \
	  fi; \
	fi

# The console's browser tests drive Debian's Chromium through Playwright (its own browser
# download is not used: tests launch /usr/bin/chromium).
check-chromium:
	@if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    echo "chromium not found: installing it with apt-get"; \
	    (apt-get install -y chromium || (apt-get update && apt-get install -y chromium)); \
	  else \
	    echo "error: the browser tests need Debian's chromium. Install it: sudo apt-get install -y chromium" >&2; \
	    exit 1; \
	  fi; \
	fi

lint: $(VENV)/.test-installed
	$(BIN)/ruff check jaa_gateway tests benchmarks
	$(BIN)/ruff format --check jaa_gateway tests benchmarks

typecheck: $(VENV)/.test-installed
	$(BIN)/mypy jaa_gateway

pytest: $(VENV)/.test-installed check-mosquitto check-postgres check-chromium
	$(BIN)/pytest -q

test: $(VENV)/.test-installed check-mosquitto check-postgres check-chromium lint typecheck pytest

bench: $(VENV)/.test-installed check-mosquitto check-postgres
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

# The long crash loop (issue 7): >= 200 SIGKILLs of the daemon, invariants checked after each
# restart, counts printed. CHAOS_KILLS / CHAOS_SEED / CHAOS_REPORT override.
.PHONY: chaos
chaos: $(VENV)/.test-installed check-mosquitto
	CHAOS_KILLS=$${CHAOS_KILLS:-200} $(BIN)/pytest -q tests/test_chaos.py -k crash_loop

# The crash loop across three nodes (issue 13): three gateways on the tests' own PostgreSQL
# cluster, the leader SIGKILLed >= 100 times, invariants and one-actor checked after each
# takeover, takeover times printed. CHAOS_HA_KILLS / CHAOS_SEED / CHAOS_REPORT override.
.PHONY: chaos-ha
chaos-ha: $(VENV)/.test-installed check-mosquitto check-postgres
	CHAOS_HA_KILLS=$${CHAOS_HA_KILLS:-100} $(BIN)/pytest -q tests/test_chaos_ha.py -k crash_loop

# The load-held soak (issue 7): the benchmark campus for SOAK_DURATION seconds (default 600),
# RSS/CPU/queues sampled every 10 s; exit 1 when not flat. Writes benchmarks/results/soak.json.
soak: $(VENV)/.test-installed check-mosquitto
	$(PY) -m benchmarks.soak --duration $${SOAK_DURATION:-600}
