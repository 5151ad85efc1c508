"""A small line editor for raw terminals (VT100 subset: works in picocom, minicom, PuTTY, tmux).

Keys: printable text is inserted at the cursor; Backspace (DEL or ^H) and Delete remove; Left,
Right, Home, End, ^A ^E ^B ^F move; Up/Down or ^P/^N walk the history; Tab completes (twice:
lists the choices); ^U, ^K, ^W cut; ^L redraws; ^C abandons the line; ^D on an empty line ends
the session. Enter is CR, LF or CR LF. Every other control byte and every unknown escape
sequence is ignored, and bytes that are not UTF-8 are dropped: garbage on the line cannot
crash the editor or reach a command as anything but printable text.

The editor redraws with relative cursor moves, wrapping at ``cols`` columns (80 by default:
a serial line cannot tell the terminal's width). Lines are at most ``max_len`` characters.
"""

from __future__ import annotations

import codecs
import time
import unicodedata
from collections.abc import Callable

from gateway.console.terminal import Terminal

# (start of the word being completed, full candidate words)
Completer = Callable[[str], tuple[int, list[str]]]

BELL = "\x07"
MAX_ESCAPE = 16
_SEQUENCES = {
    "[A": "up",
    "[B": "down",
    "[C": "right",
    "[D": "left",
    "[H": "home",
    "[F": "end",
    "OA": "up",
    "OB": "down",
    "OC": "right",
    "OD": "left",
    "OH": "home",
    "OF": "end",
    "[1~": "home",
    "[7~": "home",
    "[4~": "end",
    "[8~": "end",
    "[3~": "delete",
}
_CONTROL = {
    "\x01": "home",
    "\x02": "left",
    "\x03": "cancel",
    "\x04": "eof",
    "\x05": "end",
    "\x06": "right",
    "\x08": "backspace",
    "\x09": "tab",
    "\x0b": "kill-end",
    "\x0c": "redraw",
    "\x0e": "down",
    "\x10": "up",
    "\x15": "kill-start",
    "\x17": "kill-word",
    "\x7f": "backspace",
}


class Idle(Exception):
    """No key for the idle time: the session logs out."""


def char_width(ch: str) -> int:
    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def text_width(text: str) -> int:
    return sum(char_width(ch) for ch in text)


def _common_prefix(words: list[str]) -> str:
    first, last = min(words), max(words)
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    return first[:n]


def printable(text: str) -> str:
    """``text`` with every control character but newline and tab shown as '?': text from the
    controller or a file can never move the cursor or reprogram the terminal."""
    return "".join(ch if ch.isprintable() or ch in "\n\t" else "?" for ch in text)


class LineEditor:
    """Reads lines from ``term`` with editing and history; writes text to it."""

    def __init__(
        self,
        term: Terminal,
        *,
        cols: int = 80,
        max_len: int = 512,
        history_size: int = 200,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 20 <= cols <= 1000:
            raise ValueError(f"cols {cols!r}: must be from 20 to 1000")
        self.term = term
        self.cols = cols
        self.max_len = max_len
        self.history_size = history_size
        self.clock = clock
        self.history: list[str] = []
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        self._keys: list[str] = []  # decoded keys not yet handled (type-ahead)
        self._escape: str | None = None
        self._skip_lf = False
        # The line being edited.
        self._prompt = ""
        self._buf: list[str] = []
        self._pos = 0
        self._cursor_row = 0
        self._secret = False
        self._last_tab = False

    # -- output ----------------------------------------------------------------------------------

    def _raw(self, text: str) -> None:
        if self.term.crlf:
            text = text.replace("\r\n", "\n").replace("\n", "\r\n")
        self.term.write(text.encode("utf-8", "replace"))

    def write(self, text: str) -> None:
        """Write command output (made printable; newlines as the terminal needs them)."""
        self._raw(printable(text))

    def bell(self) -> None:
        self.term.write(BELL.encode())

    # -- input -----------------------------------------------------------------------------------

    def discard_typeahead(self) -> None:
        """Forget keys typed ahead (before asking for a PIN or a confirmation): a 'yes' typed
        before the question was shown must not answer it. Not on a pipe (a script)."""
        if not self.term.echo:
            return
        self._keys.clear()
        self._escape = None
        while self.term.read(0.0):
            pass

    def _next_key(self, deadline: float) -> str:
        """The next key (a character or a key name); Idle at ``deadline``."""
        while not self._keys:
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise Idle()
            data = self.term.read(min(remaining, 1.0))
            if data:
                self._feed(self._decoder.decode(data))
        return self._keys.pop(0)

    def _feed(self, text: str) -> None:
        for ch in text:
            if self._escape is not None and (ch < " " or ch == "\x7f"):
                self._escape = None  # a control key ends an unfinished escape sequence
            if self._escape is not None:
                self._escape += ch
                seq = self._escape
                if len(seq) == 1 and ch not in "[O":
                    self._escape = None  # ESC + key (Alt): ignored
                elif len(seq) >= 2 and ("\x40" <= ch <= "\x7e"):
                    self._escape = None
                    name = _SEQUENCES.get(seq)
                    if name is not None:
                        self._keys.append(name)
                elif len(seq) > MAX_ESCAPE:
                    self._escape = None
                continue
            if ch == "\x1b":
                self._escape = ""
                continue
            if ch == "\r":
                self._skip_lf = True
                self._keys.append("enter")
                continue
            if ch == "\n":
                if not self._skip_lf:
                    self._keys.append("enter")
                self._skip_lf = False
                continue
            self._skip_lf = False
            if ch in _CONTROL:
                self._keys.append(_CONTROL[ch])
            elif ch.isprintable():
                self._keys.append(ch)
            # any other control character: ignored

    def read_line(
        self,
        prompt: str,
        *,
        idle_s: float,
        secret: bool = False,
        completer: Completer | None = None,
        history: bool = True,
        cancel: str | None = "",
    ) -> str | None:
        """One line, without its newline. None: ^D on an empty line. ^C returns ``cancel``
        ("" by default: a fresh prompt; None for a question, which then counts as declined).
        Raises Idle after ``idle_s`` seconds without a key, Hangup when the terminal is gone."""
        self._prompt = printable(prompt).replace("\n", " ")
        self._buf = []
        self._pos = 0
        self._cursor_row = 0
        self._secret = secret
        self._last_tab = False
        use_history = history and not secret
        hist_index = len(self.history)
        draft = ""
        self._raw(self._prompt)
        deadline = self.clock() + idle_s
        while True:
            key = self._next_key(deadline)
            deadline = self.clock() + idle_s
            was_tab = self._last_tab
            self._last_tab = False
            if key == "enter":
                self._end_of_line()
                line = "".join(self._buf)
                if use_history and line.strip() and (not self.history or self.history[-1] != line):
                    self.history.append(line)
                    del self.history[: -self.history_size]
                return line
            if key == "cancel":
                self._end_of_line("^C")
                return cancel
            if key == "eof":
                if not self._buf:
                    self._end_of_line()
                    return None
                self._delete_at_cursor()
            elif key == "backspace":
                self._backspace()
            elif key == "delete":
                self._delete_at_cursor()
            elif key == "left":
                self._move(self._pos - 1)
            elif key == "right":
                self._move(self._pos + 1)
            elif key == "home":
                self._move(0)
            elif key == "end":
                self._move(len(self._buf))
            elif key == "kill-start":
                del self._buf[: self._pos]
                self._pos = 0
                self._refresh()
            elif key == "kill-end":
                del self._buf[self._pos :]
                self._refresh()
            elif key == "kill-word":
                start = self._pos
                while start > 0 and self._buf[start - 1] == " ":
                    start -= 1
                while start > 0 and self._buf[start - 1] != " ":
                    start -= 1
                del self._buf[start : self._pos]
                self._pos = start
                self._refresh()
            elif key == "redraw":
                self._raw("\x1b[H\x1b[2J")
                self._cursor_row = 0
                self._raw(self._prompt)
                self._refresh()
            elif key in ("up", "down") and use_history:
                if key == "up" and hist_index > 0:
                    if hist_index == len(self.history):
                        draft = "".join(self._buf)
                    hist_index -= 1
                    self._replace(self.history[hist_index])
                elif key == "down" and hist_index < len(self.history):
                    hist_index += 1
                    self._replace(
                        draft if hist_index == len(self.history) else self.history[hist_index]
                    )
                else:
                    self.bell()
            elif key == "tab":
                if completer is None or secret:
                    self.bell()
                else:
                    self._complete(completer, list_all=was_tab)
                    self._last_tab = True
            elif len(key) == 1:
                self._insert(key)

    # -- editing ---------------------------------------------------------------------------------

    def _shown(self, chars: list[str]) -> str:
        return "*" * len(chars) if self._secret else "".join(chars)

    def _insert(self, text: str) -> None:
        if len(self._buf) + len(text) > self.max_len:
            self.bell()
            return
        at_end = self._pos == len(self._buf)
        self._buf[self._pos : self._pos] = list(text)
        self._pos += len(text)
        if at_end and all(char_width(c) == 1 for c in text) and self.term.echo:
            # Fast path: echo the characters; wrap explicitly at the right margin.
            end = text_width(self._prompt) + text_width(self._shown(self._buf))
            self._raw(self._shown(list(text)))
            if end % self.cols == 0:
                self._raw("\r\n")
            self._cursor_row = end // self.cols
        else:
            self._refresh()

    def _backspace(self) -> None:
        if self._pos == 0:
            self.bell()
            return
        at_end = self._pos == len(self._buf)
        removed = self._buf.pop(self._pos - 1)
        self._pos -= 1
        col = (text_width(self._prompt) + text_width(self._shown(self._buf))) % self.cols
        if at_end and char_width(removed) == 1 and col != self.cols - 1 and self.term.echo:
            self._raw("\b \b")
        else:
            self._refresh()

    def _delete_at_cursor(self) -> None:
        if self._pos >= len(self._buf):
            self.bell()
            return
        del self._buf[self._pos]
        self._refresh()

    def _move(self, pos: int) -> None:
        pos = max(0, min(len(self._buf), pos))
        if pos != self._pos:
            self._pos = pos
            self._refresh()

    def _replace(self, text: str) -> None:
        self._buf = list(text[: self.max_len])
        self._pos = len(self._buf)
        self._refresh()

    def _end_of_line(self, mark: str = "") -> None:
        if self._pos != len(self._buf):
            self._pos = len(self._buf)
            self._refresh()
        self._raw(mark + "\r\n")
        self._cursor_row = 0

    def _refresh(self) -> None:
        """Redraw prompt and line from the prompt's first row; put the cursor in place."""
        if not self.term.echo:
            return
        out = []
        if self._cursor_row > 0:
            out.append(f"\x1b[{self._cursor_row}A")
        out.append("\r\x1b[J")
        shown = self._prompt + self._shown(self._buf)
        out.append(shown)
        end = text_width(shown)
        end_row = end // self.cols
        if end > 0 and end % self.cols == 0:
            out.append("\r\n")
        target = text_width(self._prompt) + text_width(self._shown(self._buf[: self._pos]))
        row, col = divmod(target, self.cols)
        if end_row > row:
            out.append(f"\x1b[{end_row - row}A")
        out.append("\r")
        if col:
            out.append(f"\x1b[{col}C")
        self._cursor_row = row
        self._raw("".join(out))

    def _complete(self, completer: Completer, *, list_all: bool) -> None:
        before = "".join(self._buf[: self._pos])
        try:
            start, candidates = completer(before)
        except Exception:  # a completer bug must never end the session
            start, candidates = self._pos, []
        word = before[start:]
        candidates = sorted({c for c in candidates if c.startswith(word)})
        if not candidates:
            self.bell()
            return
        if len(candidates) == 1:
            only = candidates[0]
            suffix = only[len(word) :]
            if not only.endswith(("=", "/")):
                suffix += " "
            self._insert(suffix)
            return
        common = _common_prefix(candidates)
        if len(common) > len(word):
            self._insert(common[len(word) :])
            return
        if not list_all:
            self.bell()
            return
        # Second tab: list the choices under the line, then draw the line again.
        pos = self._pos
        self._pos = len(self._buf)
        self._refresh()
        width = max(len(c) for c in candidates) + 2
        per_row = max(1, self.cols // width)
        rows = [candidates[i : i + per_row] for i in range(0, len(candidates), per_row)]
        self._raw("\r\n" + "\r\n".join("".join(c.ljust(width) for c in r).rstrip() for r in rows))
        self._raw("\r\n")
        self._cursor_row = 0
        self._pos = pos
        self._raw(self._prompt)
        self._refresh()
