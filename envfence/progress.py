"""Progress of a long run, on standard error, never on standard output (reports go there).

- `tty`: a spinner with the current step, on a terminal, shown only once the run has taken more
  than a second (a fast run prints nothing).
- `plain`: one line per step as it finishes, with its time (CI logs; no control characters).
- `none`: nothing.

`auto` (the default) is `tty` when standard error is a terminal, `plain` when the `CI`
environment variable is set (GitHub Actions, GitLab and most CI systems set it), else `none`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, TextIO

MODES = ("auto", "tty", "plain", "none")
DELAY = 1.0  # seconds before the spinner appears


def resolve(mode: str, stream: TextIO | None = None) -> str:
    stream = stream or sys.stderr
    if mode != "auto":
        return mode
    if stream.isatty():
        return "tty"
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        return "plain"
    return "none"


class Progress:
    def __init__(self, mode: str = "auto", stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.mode = resolve(mode, self.stream)
        self.started = time.monotonic()
        self._status: Any = None
        self._timer: threading.Timer | None = None
        self._text = ""
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def step(self, text: str) -> Iterator[None]:
        began = time.monotonic()
        self._update(text)
        yield
        if self.mode == "plain":
            print(f"envfence: {text} ({time.monotonic() - began:.1f} s)", file=self.stream)
            self.stream.flush()

    def note(self, text: str) -> None:
        """Something done within a step (a stack evaluated): a line in `plain`, the spinner's
        text on a terminal."""
        if self.mode == "plain":
            print(f"envfence: {text}", file=self.stream)
            self.stream.flush()
        self._update(text)

    def _update(self, text: str) -> None:
        if self.mode != "tty":
            return
        with self._lock:
            self._text = text
            if self._status is not None:
                self._status.update(text)
            elif self._timer is None:
                wait = max(0.0, DELAY - (time.monotonic() - self.started))
                self._timer = threading.Timer(wait, self._show)
                self._timer.daemon = True
                self._timer.start()

    def _show(self) -> None:
        from rich.console import Console

        with self._lock:
            if self._status is not None or self._timer is None:
                return
            console = Console(file=self.stream, stderr=self.stream is sys.stderr)
            self._status = console.status(self._text)
            self._status.start()

    def close(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._status is not None:
                self._status.stop()
                self._status = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["MODES", "Progress", "resolve"]
