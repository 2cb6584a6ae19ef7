# Layerswarm: the two set-up commands are `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install model demo test test-fast lint format bench bench-portal clean fuzz audit

$(STAMP): requirements/node.txt requirements/portal.txt requirements/dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -r requirements/dev.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The in-page node's runtime (onnxruntime-web, msgpack) comes from the npm registry, pinned by the lock file;
# the portal serves these files itself (no CDN).
NPM_STAMP := frontend/node_modules/.installed-stamp
$(NPM_STAMP): frontend/package.json frontend/package-lock.json | system-packages
	cd frontend && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $(NPM_STAMP)

install: $(STAMP) $(NPM_STAMP)

# System packages the tests drive: Debian's chromium (browser tests), npm (the browser node's runtime),
# iptables (the NAT test). Installed with apt when missing (as root, or through sudo); otherwise one line says how.
SYSTEM_PACKAGES := chromium npm iptables
.PHONY: system-packages
system-packages:
	@missing=""; for p in $(SYSTEM_PACKAGES); do command -v $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq $$missing; \
	  elif command -v sudo >/dev/null 2>&1; then sudo apt-get update -qq && sudo apt-get install -y -qq $$missing; \
	  else echo "missing system packages:$$missing -- run: sudo apt-get install -y$$missing" >&2; exit 1; fi; \
	fi

## Fetch the default model (SmolLM2-135M-Instruct) into $LAYERSWARM_HOME (~/.cache/layerswarm).
model: install
	$(PY) -m swarmnode models fetch smollm2

## The portal (daphne) + Celery + 3 local nodes (10 blocks each) registered with it, in the foreground:
## prints the portal URL and a demo login; Ctrl-C stops everything. (`swarmnode demo` runs the nodes alone.)
demo: model
	DJANGO_DEBUG=1 $(PY) manage.py run_demo --model smollm2 --nodes 3  # a local demo: DEBUG pages, a dev key

# The portal tests run twice: embedded (SQLite, in-memory channel layer) and on the real services.
PORTAL_PG    ?= postgres://postgres@127.0.0.1:5432/layerswarm
PORTAL_REDIS ?= redis://127.0.0.1:6379/0
ON_SERVICES  := DATABASE_URL=$(PORTAL_PG) REDIS_URL=$(PORTAL_REDIS)

## The whole test suite (CI calls exactly this): everything embedded, then the portal tests on PostgreSQL + Redis.
test: model system-packages
	$(PY) -m pytest -q
	$(ON_SERVICES) $(PY) -m pytest -q tests/portal

## Everything but the slow end-to-end tests.
test-fast: model
	$(PY) -m pytest -q -m "not slow"
	$(ON_SERVICES) $(PY) -m pytest -q -m "not slow" tests/portal

## The long protocol fuzz run: >= 100,000 generated frames through the frame decoder, relay envelope and
## secure channel (the normal suite runs a short version of the same tests).
fuzz: install
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-100000} $(PY) -m pytest -q -m fuzz tests/fuzz

## Known vulnerabilities in the pinned Python requirements (pip-audit) and the frontend lock file (npm audit).
## Reports; exits 0 when the advisory services cannot be reached (no network), non-zero on a finding.
audit: install
	@status=0; \
	for req in requirements/node.txt requirements/portal.txt requirements/dev.txt; do \
	  echo "== pip-audit $$req"; out=$$($(VENV)/bin/pip-audit --no-deps --disable-pip --progress-spinner off -r $$req 2>&1); rc=$$?; \
	  echo "$$out" | grep -v '^WARNING:pip_audit._cli'; \
	  if [ $$rc -ne 0 ]; then if echo "$$out" | grep -qiE 'connection|resolve|timed out|unreachable|network'; then \
	    echo "   (advisory service unreachable: not counted)"; else status=1; fi; fi; \
	done; \
	echo "== npm audit frontend/package-lock.json"; out=$$(cd frontend && npm audit --omit=dev 2>&1); rc=$$?; echo "$$out"; \
	if [ $$rc -ne 0 ]; then if echo "$$out" | grep -qiE 'ENOTFOUND|ECONNREFUSED|ETIMEDOUT|EAI_AGAIN|network|audit endpoint'; then \
	  echo "   (advisory service unreachable: not counted)"; else status=1; fi; fi; \
	exit $$status

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

## Swarm vs local transformers, same run.
bench: model
	$(PY) -m swarmnode bench --model smollm2 --nodes 3 --new-tokens 64 --json
	$(PY) -m swarmnode bench --model smollm2 --nodes 3 --new-tokens 64 --json --backend torch

## Execution engine: backends/precisions on the whole model, ONNX swarm vs local ONNX, batching.
bench-engine: model
	$(PY) -m swarmnode bench-backends --model smollm2 --json
	$(PY) -m swarmnode bench --model smollm2 --nodes 3 --new-tokens 64 --json --backend onnxruntime
	$(PY) -m swarmnode bench --model smollm2 --nodes 3 --sessions 1,4,8,16 --json

## Heartbeats of 1,000 simulated nodes against daphne + PostgreSQL: requests/s and p99 latency.
bench-portal: install
	$(ON_SERVICES) $(PY) bench/portal_heartbeats.py --nodes 1000

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

.PHONY: bench-swarm
## 10,000 simulated nodes (no model): route time for 30/80-block models, bottleneck vs ideal over churn.
bench-swarm: install
	$(PY) bench/swarm_sim.py --nodes 10000 --blocks 30 80 --rounds 20
.PHONY: bench-engine

.PHONY: bench-browser
## The browser node (headless chromium, onnxruntime-web) vs a Python ONNX Runtime node on the same span, same run;
## then generation tokens/s through the browser node (relayed) vs an all-Python route.
bench-browser: model
	$(PY) bench/browser_node.py --blocks 10:20 --threads 1 --route

.PHONY: bench-chat
## 20 simultaneous chat websockets against the demo swarm (embedded, then Redis + a run_gateway process):
## none lost or mixed up; aggregate tok/s and p95 time to first token, next to the swarm client alone.
bench-chat: model
	$(PY) bench/chat_concurrency.py --sessions 20
	$(ON_SERVICES) $(PY) bench/chat_concurrency.py --sessions 20
