"""What dead writers leave in an output is swept; what live writers hold is not (issue 27, item 1).
The real crash (SIGKILL of a `dvc repro`) is tests/test_crash_debris.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rgvlm.atomic import FOREIGN_TMP_AGE_S, sweep_debris, temp_prefix, write_bytes_atomic
from rgvlm.pipeline import stage_outputs, stage_spec, sweep_stage_outputs
from rgvlm.rl.iql import save_state_atomic
from rgvlm.vlm.cache import ResponseCache


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def temporary_of(target: Path, pid: int, tail: str = "abc") -> Path:
    """The name a writer with ``pid`` on this host gives the temporary of ``target``."""
    path = target.parent / (temp_prefix(target).replace(f"-{os.getpid()}.", f"-{pid}.") + f"{tail}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"torn")
    return path


def test_writers_name_their_temporaries_after_their_process(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append(Path(src).name)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    write_bytes_atomic(tmp_path / "a.json", b"{}")
    save_state_atomic({"x": 1}, tmp_path / "_stack.pt")
    assert [name.startswith(temp_prefix(tmp_path / n)) for name, n in zip(seen, ("a.json", "_stack.pt"), strict=True)] == [True, True]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["_stack.pt", "a.json"]


def test_sweep_removes_dead_writers_temporaries_and_keeps_live_ones(tmp_path):
    dead = temporary_of(tmp_path / "models" / "_stack.pt", dead_pid())
    live = temporary_of(tmp_path / "models" / "run.pt", os.getpid())
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        other_live = temporary_of(tmp_path / "models" / "other.pt", sleeper.pid)
        legacy_old = tmp_path / "models" / "_stack.pt.k2j3h4.tmp"  # an earlier version's name: no owner
        legacy_old.write_bytes(b"torn")
        os.utime(legacy_old, (time.time() - FOREIGN_TMP_AGE_S - 5,) * 2)
        legacy_new = tmp_path / "models" / "_stack.pt.zzzzzz.tmp"
        legacy_new.write_bytes(b"maybe being written")
        removed = sweep_debris(tmp_path)
        assert sorted(removed) == sorted([dead, legacy_old])
        assert live.exists() and other_live.exists() and legacy_new.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert sweep_debris(tmp_path) == [other_live]  # its writer is gone now


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process start times come from /proc")
def test_a_reused_pid_does_not_keep_a_dead_writers_temporary(tmp_path):
    """A live process that started after a temporary was last written did not write it: its pid
    is a dead writer's, reused."""
    current = temporary_of(tmp_path / "a.json", os.getppid())  # written now, by a live process
    reused = temporary_of(tmp_path / "b.json", os.getppid())
    os.utime(reused, (1.0, 1.0))  # written in 1970: before the process with that pid started
    assert sweep_debris(tmp_path) == [reused]
    assert current.exists()


def test_cache_sweep_removes_claims_of_dead_processes_only(tmp_path):
    cache = ResponseCache(tmp_path / "cache")
    assert cache.claim("ab" + "0" * 62)  # this process's, held
    shard = tmp_path / "cache" / "cd"
    shard.mkdir(parents=True)
    dead = shard / ("cd" + "1" * 62 + ".claim")
    dead.write_text(json.dumps({"host": socket.gethostname(), "pid": dead_pid(), "time": time.time()}))
    alive = shard / ("cd" + "2" * 62 + ".claim")
    alive.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid(), "time": time.time()}))
    remote_recent = shard / ("cd" + "3" * 62 + ".claim")
    remote_recent.write_text(json.dumps({"host": "elsewhere.invalid", "pid": 1, "time": time.time()}))
    half_removed = shard / ("cd" + "4" * 62 + ".claim.0123abcd.stale")
    half_removed.write_text("{}")
    answer = temporary_of(cache.path("cd" + "5" * 62), dead_pid())
    removed = cache.sweep()
    assert sorted(removed) == sorted([dead, half_removed, answer])
    assert alive.exists() and remote_recent.exists() and cache.claim_path("ab" + "0" * 62).exists()


def test_stage_start_sweeps_every_declared_output(tmp_path, monkeypatch):
    from rgvlm import paths

    monkeypatch.setattr(paths, "ROOT", tmp_path)
    spec = stage_spec("label@rg_vlm")
    outs = stage_outputs(spec)
    assert tmp_path / "outputs" / "lvlm_cache" / "rg_vlm" in outs
    html = tmp_path / "reports" / "notebooks" / "02_label_rg_vlm.html"
    assert html in outs
    left = [temporary_of(tmp_path / "outputs" / "lvlm_cache" / "rg_vlm" / "ab" / "x.json", dead_pid()),
            temporary_of(tmp_path / "outputs" / "labels" / "rg_vlm" / "rg_vlm.npy", dead_pid()),
            temporary_of(html, dead_pid())]
    unrelated = temporary_of(tmp_path / "reports" / "notebooks" / "01_dataset_card.html", dead_pid())
    assert sorted(sweep_stage_outputs(spec)) == sorted(left)
    assert unrelated.exists()  # another stage's output: swept when that stage starts


@pytest.mark.parametrize("name", ["x.json", "_stack.pt"])
def test_only_named_matches_the_file_and_not_its_prefix(tmp_path, name):
    mine = temporary_of(tmp_path / name, dead_pid())
    longer = temporary_of(tmp_path / (name + "x"), dead_pid())
    assert sweep_debris(tmp_path, only_named=name) == [mine]
    assert longer.exists()
