"""The fixture firmware under the real MicroPython VM: the WebAssembly port from npm
(@micropython/micropython-webassembly-pyscript, pinned in firmware/wasm/package-lock.json), run
by node. firmware/wasm/run.mjs writes the firmware and the fake ``machine`` into the VM's
filesystem and runs the self-test (Modbus requests in, replies checked, commands, edges, and no
allocation on the UART path, measured with ``gc.mem_alloc``)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.commands import require_command

WASM = Path(__file__).resolve().parents[2] / "firmware" / "wasm"


def test_firmware_selftest_under_the_micropython_vm() -> None:
    node = require_command("node", "nodejs")  # the MicroPython VM (WebAssembly) runs on it
    if not (WASM / "node_modules" / "@micropython").is_dir():
        npm = shutil.which("npm")
        assert npm is not None, "npm is missing: cannot install the MicroPython VM"
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=WASM,
            check=True,
            timeout=300,
        )
    run = subprocess.run([node, "run.mjs"], cwd=WASM, capture_output=True, text=True, timeout=120)
    out = run.stdout.splitlines()
    assert run.returncode == 0, run.stdout + run.stderr
    assert "implementation micropython" in out, "did not run under MicroPython"
    assert not [line for line in out if line.startswith("FAIL")], run.stdout
    assert "PASS no allocation serving 5 frames" in out
    assert out[-1].startswith("SELFTEST OK")
    assert int(out[-1].split()[2]) >= 35
