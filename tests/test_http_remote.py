"""A reproduced pipeline's DVC cache published read-only over HTTP, the way an artifact is published,
and pulled into a fresh clone: `dvc pull`, then `dvc repro` has nothing to do (issue 27, item 3).
The server is Python's own `http.server` on 127.0.0.1 (GET and HEAD only: nothing can be pushed)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.tiny_project import PULLED_FOLDERS, default_status, digest, published_repository, reader_clone, run

pytestmark = pytest.mark.slow


def test_pull_from_a_read_only_http_remote_then_repro_does_nothing(tiny_pipeline, tmp_path):
    project, env, _ = tiny_pipeline
    published = published_repository(project, tmp_path / "published", env)
    server = subprocess.Popen([sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1",
                               "--directory", str(project / ".dvc" / "cache")],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = server.stdout.readline()  # "Serving HTTP on 127.0.0.1 port N (http://127.0.0.1:N/) ..."
        port = int(line.split(" port ")[1].split()[0])
        clone, reader_env = reader_clone(published, tmp_path / "reader", env)
        run(["dvc", "remote", "add", "-d", "--local", "published", f"http://127.0.0.1:{port}/"], clone, reader_env)
        started = time.perf_counter()
        # --allow-missing: the optional noise sweep (optional/dvc.yaml) has never run here, so its
        # outputs are in no cache; what the default pipeline made must all come back (checked below).
        run(["dvc", "pull", "-q", "--allow-missing"], clone, reader_env)
        pulled_s = time.perf_counter() - started
        for folder in PULLED_FOLDERS:
            assert digest(clone, folder) == digest(project, folder), folder
        repro = run(["dvc", "repro"], clone, reader_env)
        assert "Running stage" not in repro.stdout + repro.stderr, repro.stdout[-2000:]
        assert "up to date" in default_status(clone, reader_env)
        print(f"dvc pull over HTTP: {pulled_s:.1f}s")
    finally:
        server.terminate()
        server.wait()
