# gasguard: `make demo` runs the controller on its simulated kitchen, `make test` runs every check.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test bench lint typecheck firmware unit hil clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/gasguard demo

lint: $(STAMP)
	$(VENV)/bin/ruff check gateway tests bench hil_tests

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP)
	GPIOZERO_PIN_FACTORY=mock $(PY) -m pytest -q

# The HIL fixture firmware: generated profiles current, pyright against the MicroPython rp2
# stubs, mpy-cross, and its self-test under the real MicroPython VM (WebAssembly, Node).
firmware: $(STAMP)
	PY=$(abspath $(PY)) bash firmware/tools/check.sh

test: lint typecheck firmware unit

# The hardware-in-the-loop suite (the sim rig also runs in `make test`). On a real rig:
#   make hil HIL_ARGS="--rig hw --fixture-port /dev/ttyACM0 --bus-port /dev/ttyAMA0"
hil: $(STAMP)
	rm -f build/hil/report.txt
	$(PY) -m pytest hil_tests -q --junitxml=build/hil/junit.xml --hil-report=build/hil/report.txt $(HIL_ARGS)
	@if [ -f build/hil/report.txt ]; then cat build/hil/report.txt; fi

bench: $(STAMP)
	GPIOZERO_PIN_FACTORY=mock $(PY) -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build firmware/wasm/node_modules
