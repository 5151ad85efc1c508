#!/usr/bin/env bash
# Firmware checks for `make test` (and `make firmware`), from the repository root or anywhere:
#   1. the generated profile module is current (firmware/tools/gen_profiles.py --check);
#   2. pyright type-checks firmware/fixture and firmware/main.py against the MicroPython rp2
#      stubs (pinned in firmware/tools/requirements.txt, installed into build/firmware/pydeps);
#   3. mpy-cross (same MicroPython release) compiles every firmware file for the RP2040;
#   4. the self-test runs under the real MicroPython VM (WebAssembly, firmware/wasm/run.mjs).
# Tools come from PyPI and npm at pinned versions and are installed under build/ and
# firmware/wasm/node_modules (both ignored by git); a re-run reuses them.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
PY="${PY:-$ROOT/.venv/bin/python}"
DEPS="$ROOT/build/firmware/pydeps"
REQS="$ROOT/firmware/tools/requirements.txt"
STAMP="$DEPS/.requirements.txt"

step() { printf '== firmware: %s\n' "$*"; }

step "generated profiles are current"
"$PY" firmware/tools/gen_profiles.py --check

if ! cmp -s "$REQS" "$STAMP" 2>/dev/null; then
  step "installing pinned stubs and mpy-cross into build/firmware/pydeps"
  rm -rf "$DEPS"
  "$PY" -m pip install --quiet --disable-pip-version-check --no-compile --no-deps \
    --target "$DEPS" -r "$REQS"
  cp "$REQS" "$STAMP"
fi

if [ ! -d firmware/wasm/node_modules ] || [ firmware/wasm/package-lock.json -nt firmware/wasm/node_modules ]; then
  step "npm ci (MicroPython WebAssembly VM, pyright)"
  (cd firmware/wasm && npm ci --no-audit --no-fund --loglevel=error)
  touch firmware/wasm/node_modules
fi

step "pyright against micropython-rp2-rpi-pico-stubs"
(cd firmware/wasm && ./node_modules/.bin/pyright -p ../pyrightconfig.json)

step "mpy-cross compiles every firmware file"
OUT="$ROOT/build/firmware/mpy"
mkdir -p "$OUT"
for src in firmware/main.py firmware/fixture/*.py; do
  PYTHONPATH="$DEPS" "$PY" -m mpy_cross -march=armv6m -o "$OUT/$(basename "${src%.py}").mpy" "$src"
done
echo "compiled $(ls "$OUT" | wc -l) files"

step "self-test under the MicroPython VM"
node firmware/wasm/run.mjs | grep -v '^PASS '
