"""A real `dvc repro` killed (SIGKILL to its whole process group) mid-labelling and mid-checkpoint-write
leaves nothing in any tracked output once rerun, and the rerun's outputs are those of an uninterrupted
run (issue 27, item 1).

To kill at the worst moment rather than at a random one, the killed runs get a ``sitecustomize`` on
PYTHONPATH (the pipeline's kernels inherit it) whose ``os.fsync`` hangs once a file of a given output
is fully written but not yet renamed into place: the temporary of an LVLM answer (with the chunk's
claims held) or of the stack checkpoint ``outputs/models/_stack.pt``. The test waits for that moment
and kills the process group, as a crash or an OOM kill would.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from rgvlm.atomic import is_temporary
from tests.tiny_project import default_status, run, tiny_clone

pytestmark = pytest.mark.slow

HOOK = '''
import os, time
_pattern = os.environ.get("RGVLM_TEST_HANG_ON")
_signal = os.environ.get("RGVLM_TEST_HANG_SIGNAL")
_fsync = os.fsync

def _hanging_fsync(fd):
    _fsync(fd)
    try:
        name = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return
    if _pattern in name and name.endswith(".tmp"):
        with open(_signal, "a") as handle:
            handle.write(name + "\\n")
        time.sleep(3600)  # until killed

if _pattern and _signal:
    os.fsync = _hanging_fsync
'''

# Outputs that depend on nothing but the inputs (executed notebooks and their HTML carry timestamps;
# the progress and timing metrics carry wall times).
COMPARED = ("outputs/labels", "outputs/lvlm_cache", "outputs/rewards", "outputs/models")


def digest(root: Path, folders=COMPARED) -> dict[str, str]:
    # Training logs (*.log.json) carry wall times, so they differ between any two runs.
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in folders for p in sorted((root / folder).rglob("*"))
            if p.is_file() and not p.name.endswith(".log.json")}


def debris(root: Path) -> list[str]:
    """Temporaries, claims and stale claims anywhere a stage writes (outputs/, reports/, data/)."""
    found = []
    for folder in ("outputs", "reports", "data"):
        for path in (root / folder).rglob("*"):
            if path.is_file() and (is_temporary(path) or path.suffix in (".claim", ".stale")):
                found.append(str(path.relative_to(root)))
    return sorted(found)


def kill_when_hung(dst: Path, env: dict, pattern: str, hook_dir: Path, timeout_s: float = 2400) -> list[str]:
    """`dvc repro` with the hook armed on ``pattern``; SIGKILL to its process group once it hangs
    there. Returns the temporaries the hook saw being written."""
    signal_file = hook_dir / f"hung-{abs(hash(pattern))}.txt"
    signal_file.unlink(missing_ok=True)
    hooked = {**env, "PYTHONPATH": f"{hook_dir}{os.pathsep}{env['PYTHONPATH']}",
              "RGVLM_TEST_HANG_ON": pattern, "RGVLM_TEST_HANG_SIGNAL": str(signal_file)}
    child = subprocess.Popen(["dvc", "repro"], cwd=dst, env=hooked, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while not signal_file.exists():
            if child.poll() is not None:
                raise AssertionError(f"dvc repro ended ({child.returncode}) before writing any {pattern!r} file")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} write within {timeout_s}s")
            time.sleep(0.2)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)  # the whole group: dvc, the runner, the kernel
        child.wait()
    return signal_file.read_text().split()


def test_repro_killed_mid_label_and_mid_checkpoint_leaves_no_debris(tiny_pipeline, tmp_path):
    reference, _, _ = tiny_pipeline  # an uninterrupted `dvc repro` of the same tiny profile
    dst = tmp_path / "rgvlm"
    env = tiny_clone(dst)
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(HOOK)

    # 1. Killed while an LVLM answer is being written: its temporary and its chunk's claims are left.
    torn = kill_when_hung(dst, env, "outputs/lvlm_cache/", hook_dir)
    assert any(Path(name).exists() for name in torn), "the kill left no temporary: nothing was tested"
    left = debris(dst)
    assert any(name.endswith(".claim") for name in left) and any(name.endswith(".tmp") for name in left), left

    # 2. The rerun is killed in turn while writing the stack checkpoint (a torn _stack.pt temporary).
    torn = kill_when_hung(dst, env, "outputs/models/._stack.pt.", hook_dir)
    assert [n for n in debris(dst) if "outputs/models/" in n], "the kill left no checkpoint temporary"
    # The labelling stages' debris was swept when they started again, before DVC recorded them.
    assert not [n for n in debris(dst) if "lvlm_cache" in n], debris(dst)

    # 3. A clean rerun: no debris in any output, nothing in DVC's records, outputs as uninterrupted.
    run(["dvc", "repro"], dst, env)
    assert debris(dst) == []
    recorded = (dst / "dvc.lock").read_text()
    assert ".tmp" not in recorded and ".claim" not in recorded
    for manifest in (dst / ".dvc" / "cache").rglob("*.dir"):
        text = manifest.read_text()
        assert ".tmp" not in text and ".claim" not in text, f"{manifest} records debris"
    assert digest(dst) == digest(reference)
    assert "up to date" in default_status(dst, env)
