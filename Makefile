# gasguard: `make demo` runs the controller on its simulated kitchen, `make test` runs every check.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test bench lint typecheck unit clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/gasguard demo

lint: $(STAMP)
	$(VENV)/bin/ruff check gateway tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP)
	GPIOZERO_PIN_FACTORY=mock $(PY) -m pytest -q

test: lint typecheck unit

bench: $(STAMP)
	GPIOZERO_PIN_FACTORY=mock $(PY) -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
