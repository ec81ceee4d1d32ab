"""Progress you can watch while a long stage runs: one reporter for labelling, training and evaluation.

A stage's notebook runs in a Jupyter kernel under papermill, and everything the notebook prints
goes into the executed notebook (and its HTML), not to the terminal ``dvc repro`` runs in. So a
:class:`Progress` writes to the *terminal* instead: the stderr the kernel inherited from
``python -m rgvlm.pipeline`` (and that from ``dvc repro``), never to the notebook. In a kernel,
ipykernel points file descriptor 2 at a pipe into the notebook but keeps a duplicate of the
original, which ``sys.stderr.fileno()`` returns; in a plain process that is fd 2 itself. Nothing
of it reaches the rendered notebooks, and papermill's own cell-by-cell logging stays off.

What is written depends on where it goes:

- a terminal: one line redrawn in place (``\\r``), at most every :data:`TTY_INTERVAL_S` seconds,
  left on screen when the bar closes;
- anything else (CI logs, a pipe, a file): plain lines, at most one every
  ``RGVLM_PROGRESS_INTERVAL`` seconds (default :data:`DEFAULT_INTERVAL_S`; 0 writes every
  update), and one final line when the bar closes, so a log gets a few lines per bar however
  long the work.

``RGVLM_PROGRESS=0`` turns it all off. ``RGVLM_STAGE`` (set by :mod:`rgvlm.pipeline` to the stage
being run) prefixes every line, so ``dvc repro``'s output says which stage is talking.

A line reads ``[label@rg_vlm] LVLM scripted-annotator: 40/96 answers (41%), cache hits 16, 1.85
answers/s, ETA 0:30, elapsed 0:13``. The rate counts only the work done since the bar started
(``initial`` -- answers found in the cache, the updates of a resumed stack -- is excluded), so
the ETA is that of the work left.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

SWITCH = "RGVLM_PROGRESS"  # "0": no progress output at all
INTERVAL = "RGVLM_PROGRESS_INTERVAL"  # seconds between plain lines when not writing to a terminal
STAGE = "RGVLM_STAGE"  # the pipeline stage being run: every line's prefix
DEFAULT_INTERVAL_S = 30.0  # a 20-minute stage writes about 40 lines to a CI log
TTY_INTERVAL_S = 0.2  # redrawing a terminal line faster than this only costs time


def enabled() -> bool:
    return os.environ.get(SWITCH, "1").strip() != "0"


def line_interval() -> float:
    """Seconds between plain lines (``RGVLM_PROGRESS_INTERVAL``; a bad value is named, not ignored)."""
    raw = os.environ.get(INTERVAL)
    if raw is None or not raw.strip():
        return DEFAULT_INTERVAL_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0.0:  # also NaN
        raise ValueError(f"{INTERVAL}={raw!r}: expected a number of seconds >= 0")
    return value


def terminal() -> TextIO | None:
    """The stream progress goes to: this process's original stderr (module docstring), or None
    when there is none (then nothing is written). Looked up for every bar, not cached: pytest
    swaps ``sys.stderr`` from test to test."""
    for stream in (sys.stderr, sys.__stderr__):
        try:
            fd = stream.fileno()  # in a kernel: ipykernel's copy of the original fd 2
        except (AttributeError, OSError, ValueError):
            continue  # e.g. pytest's capture, a kernel that does not capture fd 2
        try:
            return os.fdopen(fd, "w", encoding="utf-8", errors="replace", closefd=False)
        except OSError:
            continue
    return None


def format_duration(seconds: float) -> str:
    """``M:SS`` or ``H:MM:SS``."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_rate(rate: float) -> str:
    return f"{rate:.3g}" if rate < 100 else f"{rate:.0f}"


class Progress:
    """Counts ``n`` of ``total`` things (``unit``) done and reports them, rate-limited (module
    docstring). Thread-safe (answers may arrive on a backend's worker threads).

    ``initial`` counts work already done when the bar starts (not in the rate). ``fields`` are
    extra counters shown after the count (``cache_hits=12`` shows ``cache hits 12``); :meth:`update`
    replaces them. ``stream``, ``tty``, ``interval``, ``clock`` and ``on`` default to the
    terminal, whether it is one, ``RGVLM_PROGRESS_INTERVAL``, ``time.monotonic`` and
    ``RGVLM_PROGRESS`` (the tests inject them).
    """

    def __init__(self, what: str, total: int | None, unit: str = "steps", *, initial: int = 0,
                 stream: TextIO | None = None, tty: bool | None = None, interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic, on: bool | None = None, **fields: Any) -> None:
        self.what, self.total, self.unit = what, total, unit
        self.n = self.initial = int(initial)
        self.fields = dict(fields)
        self.clock = clock
        self.started = clock()
        self.closed = False
        self.failed = False  # closed by an exception: the final line says "stopped", not "done"
        self._lock = threading.Lock()
        self.on = enabled() if on is None else on
        self.stream = (terminal() if stream is None else stream) if self.on else None
        if self.stream is None:
            self.on = False
        if tty is None:
            try:
                tty = bool(self.stream is not None and self.stream.isatty())
            except (AttributeError, OSError, ValueError):
                tty = False
        self.tty = tty
        self.interval = TTY_INTERVAL_S if tty else (line_interval() if interval is None else interval)
        self.last_written: float | None = None  # when a line was last written (None: never)
        self.lines_written = 0
        self._width = 0  # of the terminal line drawn last (to blank what a shorter one leaves)
        stage = os.environ.get(STAGE, "").strip()
        self.prefix = f"[{stage}] " if stage else ""
        if self.tty and self.on:
            self._write(force=True)  # a terminal shows the bar at once: the user sees what runs

    # -- arithmetic ---------------------------------------------------------------------------
    @property
    def elapsed(self) -> float:
        return max(0.0, self.clock() - self.started)

    @property
    def rate(self) -> float | None:
        """Things per second since the bar started, ``initial`` excluded (None before any)."""
        elapsed, done = self.elapsed, self.n - self.initial
        return done / elapsed if done > 0 and elapsed > 0 else None

    @property
    def eta(self) -> float | None:
        """Seconds left at the current rate (None without a total or a rate)."""
        rate = self.rate
        if self.total is None or rate is None:
            return None
        return max(0, self.total - self.n) / rate

    def line(self) -> str:
        count = f"{self.n}/{self.total} {self.unit}" if self.total is not None else f"{self.n} {self.unit}"
        if self.total:
            count += f" ({100 * self.n // self.total}%)"
        # The extra counters next to the count, the times last: a narrow terminal cuts those first.
        parts = [count, *(f"{name.replace('_', ' ')} {value}" for name, value in self.fields.items())]
        rate = self.rate
        if rate is not None:
            parts.append(f"{format_rate(rate)} {self.unit}/s")
        if self.closed:
            parts.append(f"{'stopped after' if self.failed else 'done in'} {format_duration(self.elapsed)}")
        else:
            eta = self.eta
            if eta is not None:
                parts.append(f"ETA {format_duration(eta)}")
            parts.append(f"elapsed {format_duration(self.elapsed)}")
        return f"{self.prefix}{self.what}: {', '.join(parts)}"

    # -- reporting ----------------------------------------------------------------------------
    def update(self, n: int = 1, **fields: Any) -> None:
        """``n`` more done (and the extra counters ``fields``)."""
        self.set(self.n + n, **fields)

    def set(self, n: int, **fields: Any) -> None:
        """``n`` done in all (and the extra counters ``fields``)."""
        with self._lock:
            self.n = int(n)
            self.fields.update(fields)
            if self.on and not self.closed:
                self._write()

    def close(self, failed: bool = False) -> None:
        """The final line (always written, unless off): what was done, how fast, in how long;
        ``failed``: the work stopped on an error."""
        with self._lock:
            if self.closed:
                return
            self.closed, self.failed = True, failed
            if self.on:
                self._write(force=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.close(failed=exc_type is not None)

    def _write(self, force: bool = False) -> None:
        now = self.clock()
        # A plain log waits a whole interval before its first line, so short work writes only its
        # final line; a terminal was drawn at the start, then redraws at most every TTY_INTERVAL_S.
        if not force and now - (self.started if self.last_written is None else self.last_written) < self.interval:
            return
        self.last_written = now
        text = self.line()
        if self.tty:
            # Redraw in place: cut to the terminal's width (a wrapped line cannot be redrawn), pad
            # over what a longer previous line leaves, and end with a newline when done.
            text = text[: self._columns() - 1]
            padded = text.ljust(self._width)
            self._width = len(text)
            text = "\r" + padded + ("\n" if self.closed else "")
        else:
            text += "\n"
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            self.on = False  # the terminal went away (a closed pipe): stop reporting, keep working
            return
        self.lines_written += 1

    def _columns(self) -> int:
        try:
            return os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            return 100
