"""Atomic file writes, and sweeping the temporaries a dead writer left.

Readers see the old file or the new one, never half: every write goes through a temporary file
in the target's own directory (the only place ``os.replace`` is guaranteed atomic). The bytes
depend on nothing but the content: JSON is written with sorted keys and fixed separators
(:func:`canonical_json`), arrays as raw ``.npy`` (no timestamps, unlike ``.npz``'s zip entries).

A process killed mid-write (SIGKILL, OOM, power) leaves its temporary behind, and when the
directory is a DVC output (``outputs/models`` and ``outputs/lvlm_cache/*`` are ``persist: true``,
so reruns keep them) DVC would record, cache and push it. So every temporary is named after its
writer -- a short tag of its host and its pid (:func:`temp_prefix`) -- and :func:`sweep_debris`
removes those whose writer is gone; the pipeline runs it on a stage's outputs before the stage's
notebook starts (rgvlm.pipeline), long before DVC records.

A low layer: it imports nothing from the project.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

_HOST_TAG = hashlib.sha256(socket.gethostname().encode("utf-8")).hexdigest()[:8]
# .<name>.<host tag>-<pid>.<random>.tmp ; the random part (mkstemp's) has no dots.
_TMP_NAME = re.compile(r"^\.?(?P<name>.+)\.(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]+)\.[^.]+\.tmp$")
#: Temporaries of another host, or of a format with no owner in its name (left by earlier
#: versions: ``.x.json.abc123.tmp``, ``_stack.pt.abc123.tmp``), are judged by age: untouched
#: this long, no writer is still writing them.
FOREIGN_TMP_AGE_S = 3600.0


def temp_prefix(path: Path) -> str:
    """The prefix of the temporary for an atomic write of ``path`` (its owner in its name)."""
    return f".{path.name}.{_HOST_TAG}-{os.getpid()}."


def _started_after(pid: int, when: float) -> bool:
    """Whether process ``pid`` started after ``when`` (then it reuses the pid of a dead writer).
    False where that cannot be told (no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        started = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return False
    return started > when + 2.0  # btime and clock ticks are coarse


def writer_alive(pid: int, since: float | None = None) -> bool:
    """Whether the process ``pid`` of this host exists (and, given ``since``, the time its file
    was last written, is not a newer process that reuses a dead writer's pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        pass  # it exists, owned by someone else
    return not (since is not None and _started_after(pid, since))


def _dead_temporary(path: Path, now: float) -> bool:
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return False
    match = _TMP_NAME.match(path.name)
    if match and match["host"] == _HOST_TAG:
        pid = int(match["pid"])
        return pid != os.getpid() and not writer_alive(pid, mtime)
    return now - mtime > FOREIGN_TMP_AGE_S


def is_temporary(path: Path) -> bool:
    """A temporary of an atomic write (ours, or an earlier version's ``*.tmp`` / ``.tmp.png``)."""
    return path.name.endswith(".tmp") or (path.name.startswith(".") and ".tmp." in path.name)


def sweep_debris(target: Path, only_named: str | None = None) -> list[Path]:
    """Remove the temporaries dead writers left under ``target`` (a directory, searched
    recursively; or, given ``only_named``, the temporaries of that file name in ``target``).
    Live writers' temporaries stay. Returns what was removed."""
    target = Path(target)
    if not target.is_dir():
        return []
    now = time.time()
    if only_named is None:
        candidates = (p for p in target.rglob("*") if is_temporary(p))
    else:
        candidates = (p for p in target.iterdir()
                      if is_temporary(p) and p.name.lstrip(".").startswith(only_named + "."))
    removed = []
    for path in candidates:
        if path.is_file() and _dead_temporary(path, now):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def canonical_json(obj: Any) -> bytes:
    """JSON bytes that depend only on the content (sorted keys, fixed separators)."""
    return (json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=True) + "\n").encode("ascii")


def write_json_atomic(path: Path, obj: Any) -> None:
    write_bytes_atomic(path, canonical_json(obj))


def write_npy_atomic(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    write_bytes_atomic(path, buffer.getvalue())
