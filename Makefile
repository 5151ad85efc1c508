# gasguard: `make demo` runs the controller on its simulated kitchen, `make test` runs every check.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test bench lint typecheck firmware unit hil vm-deps clean deps system-deps

# What the tests need from Debian / Raspberry Pi OS, as "command:package". `make deps` installs
# the missing ones with apt-get when it runs as root (or with passwordless sudo); otherwise it
# stops at once with the one command to run.
SYSTEM_DEPS := mosquitto:mosquitto openssl:openssl systemd-analyze:systemd node:nodejs \
	npm:npm setpriv:util-linux mount:mount python3:python3 chromium:chromium
# The same for files outside PATH, as "glob:package": the city tests' PostgreSQL server, and
# Chinese fonts for the duty page's screenshots in headless Chromium.
SYSTEM_FILES := /usr/lib/postgresql/*/bin/initdb:postgresql \
	/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc:fonts-noto-cjk

system-deps:
	@missing=""; for dep in $(SYSTEM_DEPS); do \
	  command -v "$${dep%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/$${dep%%:*}" ] || \
	    missing="$$missing $${dep#*:}"; \
	done; \
	$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	for dep in $(SYSTEM_FILES); do \
	  ls $${dep%%:*} >/dev/null 2>&1 || missing="$$missing $${dep#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then sudo=""; \
	  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo"; \
	  else echo "gasguard: missing packages:$$missing; run: sudo apt-get install -y --no-install-recommends$$missing" >&2; exit 1; fi; \
	  command -v apt-get >/dev/null 2>&1 || { echo "gasguard: no apt-get here; install:$$missing" >&2; exit 1; }; \
	  echo "== installing$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $$sudo apt-get update -qq && $$sudo apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# Everything the tests, the HIL suite and the benchmarks need: the system packages above, the
# venv, and a Home Assistant of its own for the end-to-end test (tests/home_assistant.py).
deps: system-deps $(STAMP)
	$(PY) -m tests.home_assistant --install

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/gasguard demo

lint: $(STAMP)
	$(VENV)/bin/ruff check gateway city tests bench hil_tests

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: deps
	GPIOZERO_PIN_FACTORY=mock $(PY) -m pytest -q

# The HIL fixture firmware: generated profiles current, pyright against the MicroPython rp2
# stubs, mpy-cross, and its self-test under the real MicroPython VM (WebAssembly, Node).
firmware: deps
	PY=$(abspath $(PY)) bash firmware/tools/check.sh

test: deps lint typecheck firmware unit

# The hardware-in-the-loop suite (the sim rig also runs in `make test`):
#   make hil                   the sim rig
#   make hil RIG=vm            gasguard installed in a Debian guest in QEMU (as root: builds and
#                              caches the guest image under build/vm/ on its first run)
#   make hil RIG=vm VM_ARCH=aarch64   the same on an arm64 guest, as on a Pi (its image takes
#                              about 20 minutes to build under qemu-user the first time)
#   make hil HIL_ARGS="--rig hw --fixture-port /dev/ttyACM0 --bus-port /dev/ttyAMA0"
RIG ?= sim
VM_ARCH ?= x86_64
VM_DEPS := qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils debootstrap:debootstrap \
	mkfs.ext4:e2fsprogs
# An arm64 guest: its QEMU, and qemu-user registered with binfmt_misc for debootstrap's chroot.
VM_DEPS_aarch64 := qemu-system-aarch64:qemu-system-arm qemu-aarch64-static:qemu-user-static \
	update-binfmts:binfmt-support dtc:device-tree-compiler

vm-deps:
	@$(MAKE) --no-print-directory system-deps SYSTEM_DEPS="$(VM_DEPS) $(VM_DEPS_$(VM_ARCH))" \
	  SYSTEM_FILES=""
	@if [ "$(VM_ARCH)" = aarch64 ] && [ "$$(uname -m)" != aarch64 ]; then \
	  mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; \
	  update-binfmts --enable qemu-aarch64; \
	fi

hil: deps $(if $(filter vm,$(RIG)),vm-deps)
	rm -f build/hil/report.txt
	$(PY) -m pytest hil_tests -q --rig $(RIG) --vm-arch $(VM_ARCH) --junitxml=build/hil/junit.xml --hil-report=build/hil/report.txt $(HIL_ARGS)
	@if [ -f build/hil/report.txt ]; then cat build/hil/report.txt; fi

bench: deps
	GPIOZERO_PIN_FACTORY=mock $(PY) -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build firmware/wasm/node_modules
