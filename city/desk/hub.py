"""The desk's live feed: one PostgreSQL LISTEN connection, fanned out to every open page.

The ingest workers, the watch and the desk's own actions NOTIFY ``city_changes`` with the ids
of the incidents they changed (delivered at their commit). Each server-sent-events client has
a small queue here; a client that falls behind, or a LISTEN connection that was lost (while it
was away notifications were missed), gets "reload everything" instead of a partial picture.
"""

from __future__ import annotations

import json
import queue
import threading
from typing import Any

import psycopg

from city import db
from city.log import error, log
from city.store import NOTIFY_CHANNEL

CLIENT_QUEUE = 256
RECONNECT_S = 0.25
RELOAD_ALL: dict[str, Any] = {"all": True}


class Hub:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._clients: set[queue.Queue[dict[str, Any]]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.listening = threading.Event()
        self._thread = threading.Thread(target=self._run, name="desk-hub", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def subscribe(self) -> queue.Queue[dict[str, Any]]:
        q: queue.Queue[dict[str, Any]] = queue.Queue(CLIENT_QUEUE)
        with self._lock:
            self._clients.add(q)
        return q

    def unsubscribe(self, q: queue.Queue[dict[str, Any]]) -> None:
        with self._lock:
            self._clients.discard(q)

    def publish(self, change: dict[str, Any]) -> None:
        with self._lock:
            clients = list(self._clients)
        for q in clients:
            try:
                q.put_nowait(change)
            except queue.Full:
                # Behind: drop what it has and tell it to reload the whole list.
                while True:
                    try:
                        q.get_nowait()
                    except queue.Empty:
                        break
                q.put_nowait(RELOAD_ALL)

    def _run(self) -> None:
        first = True
        while not self._stop.is_set():
            try:
                with db.connect(self.dsn, autocommit=True) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self.listening.set()
                    log("desk.listening", channel=NOTIFY_CHANNEL)
                    if not first:
                        self.publish(RELOAD_ALL)  # what changed while we were away is unknown
                    first = False
                    while not self._stop.is_set():
                        for n in conn.notifies(timeout=0.25):
                            try:
                                change = json.loads(n.payload)
                            except ValueError:
                                change = RELOAD_ALL
                            self.publish(change if isinstance(change, dict) else RELOAD_ALL)
            except psycopg.Error as e:
                self.listening.clear()
                error("desk.listen_failed", error=f"{type(e).__name__}: {e}"[:300])
                self._stop.wait(RECONNECT_S)
