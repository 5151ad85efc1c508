"""A real Home Assistant for the end-to-end tests, and the one place that says which one and where.

Home Assistant 2024.3.3 is the newest release that runs on Python 3.11 (Raspberry Pi OS
Bookworm's). It lives in its own venv (``HA_VENV``), apart from gasguard's, installed by
``make deps`` through ``python -m tests.home_assistant --install``. ``josepy<2`` keeps its
``acme`` dependency importable; the other pins are what its start-up integrations and MQTT
require, so Home Assistant starts with ``--skip-pip`` (no package index needed at test time).

``HomeAssistant`` starts it on a free loopback port with a throwaway config directory, onboards
an owner through the REST API (as the first-run page does), adds the MQTT integration through
its config flow (as a user does in Settings), and reads entity states from ``/api/states``.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
HA_VENV = REPO / "build" / "ha-venv"
HA_VERSION = "2024.3.3"
HA_PACKAGES = (
    f"homeassistant=={HA_VERSION}",
    "josepy<2",
    # What its start-up integrations (frontend, onboarding, person, recorder, ...) and MQTT
    # would otherwise pip-install at the first start, at the versions 2024.3.3 asks for.
    "paho-mqtt==1.6.1",
    "home-assistant-frontend==20240307.0",
    "SQLAlchemy==2.0.27",
    "fnv-hash-fast==0.5.0",
    "janus==1.0.0",
    "numpy==1.26.0",
    "pillow==10.2.0",
    "psutil-home-assistant==0.0.1",
    "pyotp==2.8.0",
    "PyQRCode==1.2.1",
    "PyTurboJPEG==1.7.1",
    "securetar==2024.2.1",
)
START_TIMEOUT_S = 180.0  # a first start compiles and caches a lot; later ones take seconds
INSTALL_HINT = "Home Assistant is not installed for the tests: run `make deps`"

CONFIGURATION = """\
homeassistant:
  name: gasguard test kitchen
  latitude: 30.25
  longitude: 120.17
  elevation: 10
  unit_system: metric
  time_zone: Asia/Shanghai
  country: CN
http:
  server_host: 127.0.0.1
  server_port: {port}
api:
onboarding:
config:
"""


def hass_binary() -> Path:
    return HA_VENV / "bin" / "hass"


def installed() -> bool:
    """True when ``HA_VENV`` holds every pinned package (the stamp ``install`` leaves)."""
    return hass_binary().exists() and _stamp().exists() and _stamp().read_text() == _wanted()


def _stamp() -> Path:
    return HA_VENV / ".installed-packages"


def _wanted() -> str:
    return "\n".join(HA_PACKAGES) + "\n"


def install() -> None:
    """Create ``HA_VENV`` with the pinned packages (a no-op when they are there)."""
    if installed():
        return
    HA_VENV.parent.mkdir(parents=True, exist_ok=True)
    if not (HA_VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(HA_VENV)], check=True)
    pip = [str(HA_VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, *HA_PACKAGES], check=True)
    _stamp().write_text(_wanted())


class HomeAssistant:
    """One Home Assistant process on ``port`` with its config in ``workdir``."""

    def __init__(self, workdir: Path, port: int) -> None:
        if not installed():
            raise RuntimeError(INSTALL_HINT)
        self.workdir = workdir
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = workdir / "home-assistant.log"
        self.token: str | None = None
        self._process: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "configuration.yaml").write_text(
            CONFIGURATION.format(port=port), encoding="utf-8"
        )

    # -- life cycle --------------------------------------------------------------------------------

    def start(self) -> None:
        """Start it and onboard an owner; returns with a token for the REST API."""
        self._process = subprocess.Popen(
            [
                str(hass_binary()),
                "-c",
                str(self.workdir),
                "--skip-pip",
                "--log-file",
                str(self.log_path),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"Home Assistant exited with {self._process.returncode}:\n{self.log_tail()}"
                )
            with contextlib.suppress(OSError, urllib.error.URLError):
                self._request("GET", "/api/onboarding")
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"Home Assistant did not answer within {START_TIMEOUT_S:g} s")
            time.sleep(0.5)
        self._onboard()

    def stop(self) -> None:
        process = self._process
        if process is None:
            return
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        self._process = None

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    # -- the REST API ------------------------------------------------------------------------------

    def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None, form: bool = False
    ) -> Any:
        headers: dict[str, str] = {}
        data = None
        if body is not None:
            if form:
                data = urllib.parse.urlencode(body).encode()
                headers["Content-Type"] = "application/x-www-form-urlencoded"
            else:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.base + path, data, headers, method=method)
        with urllib.request.urlopen(request, timeout=60) as response:
            text = response.read()
        return json.loads(text) if text else None

    def _onboard(self) -> None:
        client_id = f"{self.base}/"
        user = self._request(
            "POST",
            "/api/onboarding/users",
            {
                "client_id": client_id,
                "name": "Kitchen owner",
                "username": "owner",
                "password": "owner-test-password",
                "language": "en",
            },
        )
        token = self._request(
            "POST",
            "/auth/token",
            {"grant_type": "authorization_code", "code": user["auth_code"], "client_id": client_id},
            form=True,
        )
        self.token = str(token["access_token"])

    def add_mqtt(self, host: str, port: int) -> None:
        """The MQTT integration against ``host:port``, through its config flow."""
        flow = self._request("POST", "/api/config/config_entries/flow", {"handler": "mqtt"})
        entry = self._request(
            "POST",
            f"/api/config/config_entries/flow/{flow['flow_id']}",
            {"broker": host, "port": port},
        )
        if entry.get("type") != "create_entry" or entry["result"]["state"] != "loaded":
            raise RuntimeError(f"the MQTT integration did not load: {entry}")

    def states(self) -> list[dict[str, Any]]:
        return list(self._request("GET", "/api/states"))

    def entity(self, name: str) -> dict[str, Any] | None:
        """The state of the entity whose friendly name ends with ``name`` (device name first,
        as Home Assistant shows it), or None."""
        found = [
            s
            for s in self.states()
            if str(s.get("attributes", {}).get("friendly_name", "")).endswith(name)
        ]
        if len(found) > 1:
            raise AssertionError(f"{len(found)} entities end with {name!r}: {found}")
        return found[0] if found else None


def main(argv: list[str]) -> int:
    """``python -m tests.home_assistant --install``: what ``make deps`` runs."""
    if argv != ["--install"]:
        print("usage: python -m tests.home_assistant --install", file=sys.stderr)
        return 2
    install()
    print(f"Home Assistant {HA_VERSION} ready in {HA_VENV}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
