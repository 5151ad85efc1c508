"""``python3 bench/socket_flooder.py SOCKET MODE``: flood one of the safety process's local
sockets from this process until SIGTERM, then print ``sent N ok M refused R``.

MODE ``record``: record 12 kB ``uplink.*`` events on the uplink socket, back to back on one
connection (reconnecting when the server ends it), as a runaway or hostile uplinks process
would. MODE ``reset``: connect, ask for a reset, read the answer, hang up, again and again, as
a member of the service's group who may not (run it as that user). It imports nothing of
gasguard, so any Python 3 can run it as any user.
"""

from __future__ import annotations

import json
import signal
import socket
import sys
import threading

PAD = "x" * 12_000


def main(argv: list[str]) -> int:
    path, mode = argv[0], argv[1]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    if mode == "record":
        request = {"cmd": "record", "args": {"kind": "uplink.outbox_ok", "source": "flood",
                                             "details": {"pad": PAD}}}  # fmt: skip
    else:
        request = {"cmd": "reset", "args": {"operator": "flood"}}
    line = (json.dumps(request) + "\n").encode()
    sent = ok = refused = 0
    print("flooding", flush=True)
    while not stop.is_set():
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(2.0)
        try:
            s.connect(path)
            buf = b""
            while not stop.is_set():
                s.sendall(line)
                sent += 1
                while b"\n" not in buf:
                    data = s.recv(65536)
                    if not data:
                        raise ConnectionError("closed")
                    buf += data
                reply, _, buf = buf.partition(b"\n")
                if b'"ok": true' in reply:
                    ok += 1
                else:
                    refused += 1
                if mode != "record":
                    break
        except OSError:
            refused += 1
        finally:
            s.close()
    print(f"sent {sent} ok {ok} refused {refused}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
