# Layerswarm: the two set-up commands are `make demo` and `make test`.
# Python: the first of 3.11, 3.12, 3.13 found (.ci/find-python); `make PYTHON=python3.12 ...` chooses one.
PYTHON ?= $(shell .ci/find-python | head -n1 | cut -d' ' -f2)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install model demo test test-fast lint format bench bench-portal clean fuzz audit

$(STAMP): requirements/node.txt requirements/portal.txt requirements/dev.txt requirements/dht.txt pyproject.toml
	@test -x $(PY) || test -n "$(PYTHON)" || { echo "no Python 3.11-3.13 found: install one (apt-get install -y python3) or run make PYTHON=/path/to/python3.X" >&2; exit 1; }
	@test -x $(PY) || .ci/system-packages --venv $(PYTHON)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -r requirements/dev.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The in-page node's runtime (onnxruntime-web, msgpack) comes from the npm registry, pinned by the lock file;
# the portal serves these files itself (no CDN).
NPM_STAMP := frontend/node_modules/.installed-stamp
$(NPM_STAMP): frontend/package.json frontend/package-lock.json
	@.ci/system-packages npm
	cd frontend && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $(NPM_STAMP)

install: $(STAMP) $(NPM_STAMP)

# System packages the tests drive: Debian's chromium (browser tests), npm (the browser node's runtime),
# iptables (the NAT test). Installed with apt when missing (as root, or through sudo); otherwise one line says how
# (.ci/system-packages). `make demo` and `make install` need only npm (and python3.X-venv), installed the same way.
SYSTEM_PACKAGES := chromium npm iptables
.PHONY: system-packages
system-packages:
	@.ci/system-packages $(SYSTEM_PACKAGES)

## Fetch the default model (SmolLM2-135M-Instruct), Gemma 3 270M and all-MiniLM-L6-v2 into $LAYERSWARM_HOME (~/.cache/layerswarm).
model: install
	$(PY) -m swarmnode models fetch smollm2
	$(PY) -m swarmnode models fetch gemma3-270m
	$(PY) -m swarmnode models fetch minilm

## The portal (daphne) + Celery + 3 local nodes (10 blocks each) registered with it, in the foreground:
## prints the portal URL and a demo login; Ctrl-C stops everything. (`swarmnode demo` runs the nodes alone.)
## `make demo MODELS=smollm2,gemma3-270m,minilm`: nodes of several models in one swarm (each fetched, catalogued).
demo: model
	DJANGO_DEBUG=1 $(PY) manage.py run_demo --model smollm2 --nodes 3 $(if $(MODELS),--models $(MODELS))  # a local demo: DEBUG pages, a dev key

# The portal tests run twice: embedded (SQLite, in-memory channel layer) and on the real services.
PORTAL_PG    ?= postgres://postgres@127.0.0.1:5432/layerswarm
PORTAL_REDIS ?= redis://127.0.0.1:6379/0
ON_SERVICES  := DATABASE_URL=$(PORTAL_PG) REDIS_URL=$(PORTAL_REDIS)

## The whole test suite (CI calls exactly this): everything embedded (the docs site's strict build included,
## tests/test_docs.py), then the portal tests on PostgreSQL + Redis, then the protocol tests on a second Python.
## The portal's slow end-to-end tests (real nodes, daphne) run once, on the real services: the embedded run
## keeps the portal's fast tests (the SQLite and in-memory channel-layer paths) and leaves those out.
test: model system-packages
	$(PY) -m pytest -q -m "not (slow and portal)"
	$(ON_SERVICES) $(PY) -m pytest -q tests/portal
	$(MAKE) --no-print-directory test-python-versions

# The wire protocol and trust tests (no torch: its CPU build is here for one Python only) on a second Python
# 3.11-3.13, in a venv of its own, when the machine has one; the main venv's Python runs everything.
ALT_VENV  := .venv-alt
ALT_TESTS := tests/swarmnode/protocol tests/swarmnode/trust \
	--ignore tests/swarmnode/trust/test_receipts.py --ignore tests/swarmnode/trust/test_secure_channel_wire.py
.PHONY: test-python-versions
test-python-versions: install
	@main=$$($(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	alt=$$(.ci/find-python | awk -v m="$$main" '$$1 != m {print $$2; exit}'); \
	if [ -z "$$alt" ]; then echo "test-python-versions: only Python $$main here; skipped"; exit 0; fi; \
	version=$$($$alt -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	if [ "$$(cat $(ALT_VENV)/.python 2>/dev/null)" != "$$alt" ]; then \
	  rm -rf $(ALT_VENV) && .ci/system-packages --venv $$alt && $$alt -m venv $(ALT_VENV) && echo "$$alt" > $(ALT_VENV)/.python; fi; \
	pins=$$(grep -hiE '^(msgpack|numpy|cryptography|pytest|pytest-timeout|hypothesis)==' requirements/*.txt); \
	if [ "$$(cat $(ALT_VENV)/.pins 2>/dev/null)" != "$$pins" ]; then \
	  $(ALT_VENV)/bin/python -m pip install --quiet $$pins && echo "$$pins" > $(ALT_VENV)/.pins || exit 1; fi; \
	echo "== protocol and trust tests on Python $$version (main: $$main)" && \
	PYTHONPATH=. $(ALT_VENV)/bin/python -m pytest -q -p no:cacheprovider -W ignore::pytest.PytestConfigWarning \
	  --noconftest $(ALT_TESTS)

## The documentation site (mkdocs.yml, pages in docs/; the API reference is generated from the OpenAPI schema).
.PHONY: docs docs-serve
docs: install
	$(VENV)/bin/mkdocs build --strict
docs-serve: install
	$(VENV)/bin/mkdocs serve

## Everything but the slow end-to-end tests.
test-fast: model system-packages
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
	rm -rf $(VENV) $(ALT_VENV) .pytest_cache .ruff_cache site

.PHONY: bench-swarm
## 10,000 simulated nodes (no model): route time for 30/80-block models, bottleneck vs ideal over churn.
bench-swarm: install
	$(PY) bench/swarm_sim.py --nodes 10000 --blocks 30 80 --rounds 20
.PHONY: bench-engine

.PHONY: bench-browser
## The browser node (headless chromium, onnxruntime-web) vs a Python ONNX Runtime node on the same span, same run;
## then generation tokens/s through the browser node (relayed) vs an all-Python route.
bench-browser: model system-packages
	$(PY) bench/browser_node.py --blocks 10:20 --threads 1 --route

.PHONY: bench-all
## Every benchmark of issue #24's goals, one after the other (~35 min on 2 cores): writes docs/bench/latest.json,
## the generated section of docs/benchmarks.md, README's summary table and docs/img/*.png. Run it on a quiet
## machine; BENCH_NOTE="..." marks a loaded one. `$(PY) bench/all.py --render-only` redraws from the saved JSON.
bench-all: model
	$(PY) bench/all.py --pg $(PORTAL_PG) --redis $(PORTAL_REDIS) $(if $(BENCH_NOTE),--note "$(BENCH_NOTE)")

.PHONY: bench-profile
## Where the time goes: py-spy samples of each #24 goal's workload (every process it starts, set-up left out),
## summed by process role and by what the code was doing (bench-all runs it last). TARGETS=sessions,chat picks some;
## the folded stacks stay in /tmp/layerswarm-profiles (https://www.speedscope.app draws them).
bench-profile: model
	PROFILE_DATABASE_URL=$(PORTAL_PG) PROFILE_REDIS_URL=$(PORTAL_REDIS) $(PY) bench/profiles.py \
	  --raw-dir /tmp/layerswarm-profiles $(if $(TARGETS),--targets $(TARGETS))

.PHONY: bench-chat
## 20 simultaneous chat websockets against the demo swarm (embedded, then Redis + a run_gateway process):
## none lost or mixed up; aggregate tok/s and p95 time to first token, next to the swarm client alone.
bench-chat: model
	$(PY) bench/chat_concurrency.py --sessions 20
	$(ON_SERVICES) $(PY) bench/chat_concurrency.py --sessions 20
