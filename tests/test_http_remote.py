"""A reproduced pipeline's DVC cache published read-only over HTTP, the way an artifact is published,
and pulled into a fresh clone: `dvc pull`, then `dvc repro` has nothing to do (issue 27, item 3).
The server is Python's own `http.server` on 127.0.0.1 (GET and HEAD only: nothing can be pushed)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.tiny_project import run

pytestmark = pytest.mark.slow


def digest(root: Path, folder: str) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((root / folder).rglob("*")) if p.is_file()}


def test_pull_from_a_read_only_http_remote_then_repro_does_nothing(tiny_pipeline, tmp_path):
    project, env, _ = tiny_pipeline
    # What an author publishes: the repository (git) and the DVC cache (files/md5/..) as static files.
    published = tmp_path / "published"
    run(["git", "clone", "-q", str(project), str(published)], tmp_path, env)  # a snapshot of the repo
    for name in ("dvc.lock", "data.dvc"):
        (published / name).write_bytes((project / name).read_bytes())
    for folder in ("reports",):  # cache: false outputs travel in git
        run(["cp", "-r", str(project / folder), str(published)], tmp_path, env)
    run(["git", "add", "-A"], published, env)
    run(["git", "commit", "-qm", "reproduced", "--allow-empty"], published, env)

    server = subprocess.Popen([sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1",
                               "--directory", str(project / ".dvc" / "cache")],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = server.stdout.readline()  # "Serving HTTP on 127.0.0.1 port N (http://127.0.0.1:N/) ..."
        port = int(line.split(" port ")[1].split()[0])
        clone = tmp_path / "reader"
        run(["git", "clone", "-q", str(published), str(clone)], tmp_path, env)
        reader_env = {**env, "PYTHONPATH": str(clone), "DVC_SITE_CACHE_DIR": str(clone / ".cache" / "dvc-site")}
        run(["dvc", "remote", "add", "-d", "--local", "published", f"http://127.0.0.1:{port}/"], clone, reader_env)
        started = time.perf_counter()
        run(["dvc", "pull", "-q"], clone, reader_env)
        pulled_s = time.perf_counter() - started
        for folder in ("data", "outputs/labels", "outputs/rewards", "outputs/models", "outputs/lvlm_cache"):
            assert digest(clone, folder) == digest(project, folder), folder
        repro = run(["dvc", "repro"], clone, reader_env)
        assert "Running stage" not in repro.stdout + repro.stderr, repro.stdout[-2000:]
        assert "up to date" in run(["dvc", "status"], clone, reader_env).stdout
        print(f"dvc pull over HTTP: {pulled_s:.1f}s")
    finally:
        server.terminate()
        server.wait()
