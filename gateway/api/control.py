"""The controller's local control socket: ``gasguard status``, ``events``, ``reset`` ... talk to
the running controller through it.

A Unix stream socket speaking JSON lines: one request object per line, one response object per
line, in order. Request ``{"cmd": "status", "args": {...}, "id": any}`` (``args`` and ``id``
optional); response ``{"ok": true, "result": {...}}`` or ``{"ok": false, "error": "..."}``,
with the request's ``id`` echoed when it had one.

The server knows nothing about safety: the controller registers one handler per command. A
handler runs in the connection's thread (several may run at once), so it must only read
thread-safe snapshots or queue requests to the safety thread; it never touches the valves.

Safety-relevant defaults:
* socket file mode 0660: only the service's user and group may connect (a reset from this
  socket counts as local, so it must not be open to every account on the Pi);
* at most 8 connections at once (2 more kept for root and the service's own user, i.e. the
  console), at most 3 from any one ordinary uid, requests at most 64 KiB, a client that does
  not finish a request within 10 s is dropped, and no connection lives longer than 30 s: stuck
  or hostile clients cannot starve the others nor lock the console out; the listen backlog
  (128) absorbs a burst of connects, and the client waits in the kernel's queue for a place
  (a blocking connect with a send timeout, up to 1 s) instead of failing with EAGAIN;
* ``allow_uids`` (SO_PEERCRED): a socket that only some users may use at all (the uplink
  socket: root and the uplinks' user); ``refuse_uids``: users that may not (the uplinks' user
  on the control socket). Refusals are logged at most once a second per uid, with a count;
* ``rate_limits``: per peer uid and command, a token bucket (rate per second, burst); a peer
  over it gets a clear refusal and changes nothing;
* a stale socket file is replaced, but a socket another live controller answers on, or a file
  that is not a socket, is left alone and start() fails with a clear error.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from gateway.log import error, log, warn

Handler = Callable[[dict[str, Any]], dict[str, Any]]

MAX_REQUEST_BYTES = 64 * 1024
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
MAX_CONNECTIONS = 8
RESERVED_CONNECTIONS = 2  # beyond MAX_CONNECTIONS, only for root and the service's own user
MAX_CONNECTIONS_PER_UID = 3  # from any one uid that is not root or the service's own user
LISTEN_BACKLOG = 128  # connects waiting for accept(); a burst must not refuse the console
CONNECT_RETRY_S = 1.0  # how long a client waits for a place in a full backlog
CLIENT_TIMEOUT_S = 10.0
CONNECTION_LIFETIME_S = 30.0  # a connection is closed after this, however busy
SOCKET_MODE = 0o660
# sockaddr_un.sun_path is 108 bytes with the terminating NUL; the server binds a sibling name
# five bytes longer first (see start()).
MAX_SOCKET_PATH_BYTES = 107
REQUEST_KEYS = ("cmd", "args", "id")


class _Throttled:
    """Counts repeated warnings by key and logs one line a second per key with the count, so a
    flood of refused peers cannot flood the journal (nor cost the process its time)."""

    def __init__(self, event: str, every_s: float = 1.0) -> None:
        self.event = event
        self.every_s = every_s
        self._lock = threading.Lock()
        self._counts: dict[Any, tuple[float, int]] = {}

    def warn(self, key: Any, **fields: Any) -> None:
        now = time.monotonic()
        with self._lock:
            last, count = self._counts.get(key, (-1e9, 0))
            count += 1
            due = now - last >= self.every_s
            if due:
                self._counts[key] = (now, 0)
            else:
                self._counts[key] = (last, count)
                return
        warn(self.event, count=count, **fields)


class _Buckets:
    """Token buckets per (uid, command): ``limits`` maps a command to (rate per s, burst)."""

    def __init__(self, limits: Mapping[str, tuple[float, float]]) -> None:
        for cmd, (rate, burst) in limits.items():
            if not rate > 0 or not burst >= 1:
                raise ValueError(f"rate limit of {cmd!r}: ({rate!r}, {burst!r}) must be > 0, >= 1")
        self.limits = dict(limits)
        self._lock = threading.Lock()
        self._state: dict[tuple[int | None, str], tuple[float, float]] = {}

    def take(self, uid: int | None, cmd: str) -> bool:
        limit = self.limits.get(cmd)
        if limit is None:
            return True
        rate, burst = limit
        now = time.monotonic()
        with self._lock:
            if len(self._state) > 4096:  # uids are few; never let the table grow unbounded
                self._state.clear()
            tokens, at = self._state.get((uid, cmd), (burst, now))
            tokens = min(burst, tokens + (now - at) * rate)
            if tokens < 1.0:
                self._state[(uid, cmd)] = (tokens, now)
                return False
            self._state[(uid, cmd)] = (tokens - 1.0, now)
            return True


class ControlError(Exception):
    """A control request failed: no controller, a timeout, or the controller's error reply."""


class CommandError(Exception):
    """Raised by a handler for bad arguments or a refused command. Its message is sent to the
    client as the error, as is; other exceptions are reported as a failure of the handler."""


# -- argument helpers for handlers -----------------------------------------------------------


def only_args(cmd: str, args: Mapping[str, Any], allowed: Collection[str]) -> None:
    """Raise CommandError if ``args`` has a name not in ``allowed``."""
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        allowed_text = ", ".join(sorted(allowed)) or "none"
        raise CommandError(
            f"{cmd}: unknown argument(s) {', '.join(map(repr, unknown))}; allowed: {allowed_text}"
        )


def int_arg(cmd: str, args: Mapping[str, Any], name: str, lo: int, hi: int, default: int) -> int:
    """``args[name]`` as an integer in lo..hi, ``default`` when absent; CommandError otherwise."""
    value = args.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise CommandError(f"{cmd}: {name} = {_short(value)}: must be an integer from {lo} to {hi}")
    return value


def str_arg(cmd: str, args: Mapping[str, Any], name: str, default: str, max_len: int = 64) -> str:
    """``args[name]`` as a non-empty string of at most ``max_len`` characters, ``default`` when
    absent; CommandError otherwise."""
    value = args.get(name, default)
    if not isinstance(value, str) or not 0 < len(value) <= max_len:
        raise CommandError(
            f"{cmd}: {name} = {_short(value)}: must be text of 1 to {max_len} characters"
        )
    return value


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, allow_nan=False).encode() + b"\n"


def _error_line(text: str, request_id: Any = None) -> bytes:
    reply: dict[str, Any] = {"ok": False, "error": text}
    if request_id is not None:
        reply["id"] = request_id
    return _line(reply)


def _peer(conn: socket.socket) -> tuple[int, int] | None:
    """The connecting process's (pid, uid) (Linux SO_PEERCRED), None where it cannot be read."""
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return None
    pid, uid, _gid = struct.unpack("3i", creds)
    return int(pid), int(uid)


def _refuse(conn: socket.socket, text: str) -> None:
    """Answer a connection we will not serve with ``text`` and close it (never blocks long)."""
    with contextlib.suppress(OSError):
        conn.settimeout(0.2)
        conn.sendall(_error_line(text))
    conn.close()


def _peer_uid(conn: socket.socket) -> int | None:
    peer = _peer(conn)
    return None if peer is None else peer[1]


class ControlServer:
    """Serves ``handlers`` (command name -> handler(args) -> result dict) on a Unix socket at
    ``path``. See the module docstring for the protocol and the limits."""

    def __init__(
        self,
        path: Path,
        handlers: Mapping[str, Handler],
        *,
        client_timeout_s: float = CLIENT_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
        refuse_uids: Collection[int] = (),
        privileged: Collection[str] = (),
        privileged_uids: Collection[int] | None = None,
        allow_uids: Collection[int] | None = None,
        rate_limits: Mapping[str, tuple[float, float]] | None = None,
        max_per_uid: int = MAX_CONNECTIONS_PER_UID,
    ) -> None:
        for name in handlers:
            if not isinstance(name, str) or not name:
                raise ValueError(f"control command name {name!r}: must be non-empty text")
        if client_timeout_s <= 0:
            raise ValueError(f"client_timeout_s {client_timeout_s!r}: must be above 0 s")
        if max_connections < 1:
            raise ValueError(f"max_connections {max_connections!r}: must be at least 1")
        self.path = Path(path)
        self.handlers = dict(handlers)
        self.client_timeout_s = client_timeout_s
        self.max_connections = max_connections
        # Peers (by SO_PEERCRED uid) that may not use this socket at all: the uplinks process's
        # user on the control socket, so network code can never ask for a reset.
        self.refuse_uids = frozenset(refuse_uids)
        # Commands that change state (reset, tests, reload ...): only root and this service's
        # own user (the console runs as it) may send them; a technician's account in the group
        # may read (status, events). Each one is logged with the peer's uid and pid.
        self.privileged = frozenset(privileged)
        self.privileged_uids = frozenset(
            {0, os.getuid()} if privileged_uids is None else privileged_uids
        )
        # None: any peer the socket's file mode lets in; else only these uids at all.
        self.allow_uids = None if allow_uids is None else frozenset(allow_uids)
        self.max_per_uid = max_per_uid
        self._buckets = _Buckets(rate_limits or {})
        self._refused_log = _Throttled("control.peer_refused")
        self._busy_log = _Throttled("control.busy")
        self._limited_log = _Throttled("control.rate_limited")
        self._per_uid: dict[int | None, int] = {}  # open connections by peer uid
        self._listener: socket.socket | None = None
        self._inode: int | None = None
        self._accept_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # guards _clients only; never held while doing I/O
        self._clients: dict[socket.socket, threading.Thread] = {}

    # -- life cycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind the socket (mode 0660, replacing a stale one) and start accepting.
        Raises ControlError if another controller answers on it, the path is not a socket,
        or it cannot be bound."""
        if self._listener is not None:
            raise ControlError(f"control server at {self.path} already started")
        path = self.path
        temp = path.with_name(f".{path.name}.new")
        if len(os.fsencode(temp)) > MAX_SOCKET_PATH_BYTES:
            raise ControlError(
                f"control socket path {str(path)!r} is {len(os.fsencode(path))} bytes: must be "
                f"at most {MAX_SOCKET_PATH_BYTES - 5} bytes (a Unix socket address limit)"
            )
        self._check_existing(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
            # Bind under a temporary name, set the mode, then rename into place: the socket is
            # never reachable at `path` with the default (umask) permissions.
            listener.bind(os.fspath(temp))
            os.chmod(temp, SOCKET_MODE)
            listener.listen(LISTEN_BACKLOG)
            os.replace(temp, path)
            self._inode = os.stat(path).st_ino
        except OSError as e:
            listener.close()
            with contextlib.suppress(OSError):
                temp.unlink()
            raise ControlError(f"control socket {path}: cannot listen: {e}") from e
        listener.settimeout(0.2)  # lets the accept loop notice stop()
        self._listener = listener
        self._stopping.clear()
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name="control-accept", daemon=True
        )
        self._accept_thread.start()
        log("control.listening", path=path, commands=",".join(sorted(self.handlers)))

    @staticmethod
    def _check_existing(path: Path) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlError(
                f"control socket path {path} exists and is not a socket; refusing to replace it"
            )
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(os.fspath(path))
        except OSError:
            pass  # nobody answers: a stale socket from a controller that died; replaced below
        else:
            raise ControlError(
                f"control socket {path}: another controller is already listening on it"
            )
        finally:
            probe.close()
        warn("control.stale_socket_replaced", path=path)

    def stop(self) -> None:
        """Stop accepting, drop every connection, remove the socket file (if still ours)."""
        listener = self._listener
        if listener is None:
            return
        self._stopping.set()
        if self._accept_thread is not None:
            self._accept_thread.join(5.0)
        listener.close()
        self._listener = None
        with self._lock:
            clients = list(self._clients.items())
        for conn, _ in clients:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for _, thread in clients:
            thread.join(5.0)
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self._inode:
                self.path.unlink()
        log("control.stopped", path=self.path)

    # -- connections -----------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError as e:
                if self._stopping.is_set():
                    return
                error("control.accept_failed", path=self.path, error=e)
                time.sleep(0.1)
                continue
            peer_uid = _peer_uid(conn)
            if (self.refuse_uids and peer_uid in self.refuse_uids) or (
                self.allow_uids is not None and peer_uid not in self.allow_uids
            ):
                self._refused_log.warn(peer_uid, path=self.path, uid=peer_uid)
                _refuse(conn, "refused: this user may not use this socket")
                continue
            # Room is kept for the console and root: other local clients (however many, however
            # slow, from however many uids) can never take the last slots.
            privileged = peer_uid in self.privileged_uids
            limit = self.max_connections + (RESERVED_CONNECTIONS if privileged else 0)
            with self._lock:
                mine = self._per_uid.get(peer_uid, 0)
                busy = len(self._clients) >= limit or (not privileged and mine >= self.max_per_uid)
                if not busy:
                    thread = threading.Thread(
                        target=self._serve, args=(conn, peer_uid), name="control-conn", daemon=True
                    )
                    self._clients[conn] = thread
                    self._per_uid[peer_uid] = mine + 1
            if busy:
                self._busy_log.warn(peer_uid, path=self.path, uid=peer_uid)
                _refuse(
                    conn,
                    f"busy: at most {self.max_connections} control connections at once, "
                    f"{self.max_per_uid} from one user",
                )
            else:
                thread.start()

    def _serve(self, conn: socket.socket, peer_uid: int | None) -> None:
        try:
            self._serve_lines(conn, _peer(conn))
        except OSError as e:
            if not self._stopping.is_set():
                warn("control.client_dropped", reason=f"socket error: {e}")
        except Exception as e:  # never let one client take the server down
            error("control.client_failed", error=f"{type(e).__name__}: {e}")
        finally:
            with self._lock:
                self._clients.pop(conn, None)
                left = self._per_uid.get(peer_uid, 1) - 1
                if left > 0:
                    self._per_uid[peer_uid] = left
                else:
                    self._per_uid.pop(peer_uid, None)
            conn.close()

    def _serve_lines(self, conn: socket.socket, peer: tuple[int, int] | None) -> None:
        buf = bytearray()
        deadline = time.monotonic() + self.client_timeout_s
        # Idle deadline per request, and a total one: a client cannot keep a slot by sending a
        # request every few seconds.
        end_of_life = time.monotonic() + CONNECTION_LIFETIME_S
        while not self._stopping.is_set():
            if time.monotonic() > end_of_life:
                warn("control.client_dropped", reason=f"open longer than {CONNECTION_LIFETIME_S} s")
                return
            newline = buf.find(b"\n")
            if (newline < 0 and len(buf) > MAX_REQUEST_BYTES) or newline > MAX_REQUEST_BYTES:
                # Cannot tell where the next request starts: answer once, then hang up.
                warn("control.client_dropped", reason="request too large")
                conn.settimeout(self.client_timeout_s)
                conn.sendall(_error_line(f"request larger than {MAX_REQUEST_BYTES} bytes; closing"))
                return
            if newline >= 0:
                line = bytes(buf[:newline])
                del buf[: newline + 1]
                conn.settimeout(self.client_timeout_s)  # a client that never reads is dropped
                conn.sendall(self.respond(line, peer))
                deadline = time.monotonic() + self.client_timeout_s
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                warn(
                    "control.client_dropped", reason=f"no request within {self.client_timeout_s} s"
                )
                return
            conn.settimeout(remaining)
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue  # the deadline check above drops it
            if not data:
                if buf.strip():  # a last request without its newline, then end of input
                    conn.settimeout(self.client_timeout_s)
                    with contextlib.suppress(OSError):
                        conn.sendall(self.respond(bytes(buf), peer))
                return
            buf += data

    # -- one request -----------------------------------------------------------------------------

    def respond(self, line: bytes, peer: tuple[int, int] | None = None) -> bytes:
        """The response line (with its newline) for one request line from ``peer`` (pid, uid;
        None: unknown, refused the privileged commands). Never raises."""
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            return _error_line(f"request is not UTF-8 text: {e.reason} at byte {e.start}")
        if not text.strip():
            return _error_line('empty request; send a JSON object like {"cmd": "status"}')
        try:
            request = json.loads(text, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as e:
            return _error_line(f"invalid JSON: {e}")
        if not isinstance(request, dict):
            return _error_line(
                'request must be a JSON object like {"cmd": "status"}, '
                f"not {type(request).__name__}"
            )
        request_id = request.get("id")
        if isinstance(request_id, dict | list):
            return _error_line(f"id {_short(request_id)}: must be a number or text")
        unknown = sorted(set(request) - set(REQUEST_KEYS))
        if unknown:
            return _error_line(
                f"unknown request key(s) {', '.join(map(_short, unknown))}; allowed: "
                + ", ".join(REQUEST_KEYS),
                request_id,
            )
        cmd = request.get("cmd")
        commands = ", ".join(sorted(self.handlers))
        if not isinstance(cmd, str):
            return _error_line(f"cmd {_short(cmd)}: must be one of {commands}", request_id)
        handler = self.handlers.get(cmd)
        if handler is None:
            return _error_line(f"unknown command {_short(cmd)}: one of {commands}", request_id)
        if cmd in self.privileged:
            pid, uid = peer if peer is not None else (None, None)
            if uid not in self.privileged_uids:
                warn("control.not_permitted", cmd=cmd, uid=uid, pid=pid)
                return _error_line(
                    f"{cmd}: not permitted for uid {uid}: only root and the service's own user "
                    "(the technician console) may change anything",
                    request_id,
                )
            log("control.command", cmd=cmd, uid=uid, pid=pid)
        if not self._buckets.take(None if peer is None else peer[1], cmd):
            uid = None if peer is None else peer[1]
            self._limited_log.warn((uid, cmd), path=self.path, cmd=cmd, uid=uid)
            rate, burst = self._buckets.limits[cmd]
            return _error_line(
                f"{cmd}: rate limited: at most {rate:g} a second (bursts of {burst:g}) per user; "
                "nothing was done",
                request_id,
            )
        args = request.get("args", {})
        if not isinstance(args, dict):
            return _error_line(f"{cmd}: args {_short(args)}: must be a JSON object", request_id)
        try:
            result = handler(dict(args))
        except CommandError as e:
            return _error_line(str(e), request_id)
        except Exception as e:
            error("control.handler_failed", cmd=cmd, error=f"{type(e).__name__}: {e}")
            return _error_line(f"{cmd} failed: {type(e).__name__}: {e}", request_id)
        if not isinstance(result, dict):
            error("control.bad_result", cmd=cmd, result_type=type(result).__name__)
            return _error_line(f"{cmd} failed: its result is not a JSON object", request_id)
        reply: dict[str, Any] = {"ok": True, "result": result}
        if request_id is not None:
            reply["id"] = request_id
        try:
            return _line(reply)
        except (TypeError, ValueError) as e:
            error("control.bad_result", cmd=cmd, error=e)
            return _error_line(f"{cmd} failed: its result is not JSON ({e})", request_id)


class ControlClient:
    """Calls the running controller. One connection per call; ``timeout`` (default 5 s) bounds
    the whole call."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self.path = Path(path)
        self.timeout = timeout

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        """Send one command; return its result. Raises ControlError when no controller listens,
        on a timeout, on a malformed reply, or with the controller's error text."""
        try:
            request = _line({"cmd": cmd, "args": args})
        except (TypeError, ValueError) as e:
            raise ControlError(f"{cmd}: arguments are not JSON: {e}") from e
        deadline = time.monotonic() + self.timeout
        sock = self._connect(deadline)
        try:
            try:
                # The server may have answered and hung up first (busy): read its reason.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    sock.sendall(request)
                reply = self._read_line(sock, deadline)
            except TimeoutError as e:
                raise ControlError(
                    f"{cmd}: no reply from the controller at {self.path} within {self.timeout} s"
                ) from e
            except OSError as e:
                raise ControlError(f"{cmd}: connection to {self.path} failed: {e}") from e
        finally:
            sock.close()
        try:
            response = json.loads(reply)
        except ValueError as e:
            raise ControlError(f"{cmd}: the controller sent invalid JSON: {e}") from e
        if not isinstance(response, dict) or not isinstance(response.get("ok"), bool):
            raise ControlError(f"{cmd}: the controller sent a malformed reply: {_short(response)}")
        if not response["ok"]:
            raise ControlError(str(response.get("error", "unknown error")))
        result = response.get("result")
        if not isinstance(result, dict):
            raise ControlError(f"{cmd}: the controller's result is not an object: {_short(result)}")
        return result

    def _connect(self, deadline: float) -> socket.socket:
        """A connected socket. A full listen backlog (a burst of other clients) is waited out
        in the kernel's queue for up to CONNECT_RETRY_S: a blocking connect with a send
        timeout sleeps until the server accepts, instead of failing at once with EAGAIN as a
        non-blocking one does. Anything else fails at once."""
        wait_s = max(0.01, min(deadline - time.monotonic(), CONNECT_RETRY_S))
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setsockopt(
                socket.SOL_SOCKET,
                socket.SO_SNDTIMEO,
                struct.pack("ll", int(wait_s), int((wait_s % 1) * 1_000_000)),
            )
            sock.settimeout(None)  # blocking: the kernel queues us behind the backlog
            sock.connect(os.fspath(self.path))
        except (BlockingIOError, TimeoutError) as e:
            sock.close()
            raise ControlError(
                f"the controller at {self.path} is busy: its queue of connections stayed full "
                f"for {wait_s:g} s ({e.strerror or e})"
            ) from e
        except OSError as e:
            sock.close()
            raise ControlError(
                f"no controller listening at {self.path}: {e.strerror or e} "
                "(is the gasguard service running, and are you in its group?)"
            ) from e
        sock.settimeout(self.timeout)
        return sock

    def _read_line(self, sock: socket.socket, deadline: float) -> bytes:
        buf = bytearray()
        while True:
            newline = buf.find(b"\n")
            if newline >= 0:
                return bytes(buf[:newline])
            if len(buf) > MAX_RESPONSE_BYTES:
                raise ControlError(f"reply from {self.path} larger than {MAX_RESPONSE_BYTES} bytes")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            sock.settimeout(remaining)
            data = sock.recv(65536)
            if not data:
                raise ControlError(f"the controller at {self.path} closed the connection")
            buf += data
