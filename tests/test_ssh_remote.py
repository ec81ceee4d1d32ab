"""A writable DVC remote over a real protocol: SSH (SFTP), served on 127.0.0.1 by asyncssh
(tests/sftp_server.py, key authentication with keys made in tmp_path) and spoken to by DVC's own
dvc-ssh, the way an author pushes the cache (issue 27, item 3). A reproduced tiny pipeline's cache is
pushed, then pulled into a reader's fresh clone by `make reproduce` (which pulls what a configured
remote has: `dvc repro` then runs no stage); a second push is killed midway (SIGKILL to its process
group) and resumed: the resumed push sends exactly the objects the killed one had not finished, and a
pull then gives byte-identical outputs.

SSH rather than S3 through moto: asyncssh is already in the lock (scmrepo needs it) and serves SFTP
in-process, so the test adds only dvc-ssh (and sshfs, bcrypt) to the environment, not moto's server
stack and boto3/aiobotocore; and SSH is what a lab's own server offers an author without a cloud
account."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.tiny_project import PULLED_FOLDERS, default_status, digest, published_repository, reader_clone, run

pytestmark = pytest.mark.slow

SERVER = Path(__file__).with_name("sftp_server.py")
#: Held on every write request by the server of the interrupted push, so that the kill lands with
#: some objects sent and some not (a tiny cache crosses loopback in well under a second unthrottled).
WRITE_DELAY_S = 0.1


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    import asyncssh

    folder = tmp_path_factory.mktemp("ssh-keys")
    host, client = asyncssh.generate_private_key("ssh-ed25519"), asyncssh.generate_private_key("ssh-ed25519")
    host.write_private_key(folder / "host_key")
    client.write_private_key(folder / "client_key")
    client.write_public_key(folder / "client_key.pub")
    return {"host": folder / "host_key", "client": folder / "client_key", "authorized": folder / "client_key.pub"}


@contextmanager
def sftp_server(root: Path, keys: dict[str, Path], write_delay: float = 0.0):
    """tests/sftp_server.py serving ``root`` on 127.0.0.1: yields its port."""
    root.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen([sys.executable, str(SERVER), "--root", str(root), "--host-key", str(keys["host"]),
                               "--authorized-keys", str(keys["authorized"]), "--write-delay", str(write_delay)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()  # "listening on 127.0.0.1 port N"
        assert line.startswith("listening on"), f"sftp server did not start: {line!r} {server.stderr.read()}"
        yield int(line.split()[-1])
    finally:
        server.terminate()
        server.wait()


def ssh_env(env: dict, home: Path) -> dict:
    """``env`` with a HOME of its own: no ~/.ssh/config or known_hosts of the machine's user is read."""
    home.mkdir(parents=True, exist_ok=True)
    return {**env, "HOME": str(home)}


def add_remote(repo: Path, env: dict, name: str, port: int, key: Path) -> None:
    """``name`` as the default remote, in .dvc/config.local (the shared fixture's config is not changed)."""
    run(["dvc", "remote", "add", "-f", "-d", "--local", name, f"ssh://rgvlm@127.0.0.1:{port}/cache"], repo, env)
    run(["dvc", "remote", "modify", "--local", name, "keyfile", str(key)], repo, env)


@contextmanager
def remote_on(repo: Path, env: dict, name: str, port: int, key: Path):
    add_remote(repo, env, name, port, key)
    try:
        yield
    finally:  # the shared tiny pipeline goes back as it was
        run(["dvc", "remote", "remove", "--local", name], repo, env)


def objects(root: Path) -> set[str]:
    """The complete objects on the remote (its files/md5/XX/YYYY...): names, not DVC's temporaries
    (``.NAME.tmp``, renamed onto the object's name once its last byte is written)."""
    return {f"{p.parent.name}{p.name}" for p in (root / "cache" / "files" / "md5").glob("*/*")
            if p.is_file() and not p.name.startswith(".")}


def temporaries(root: Path) -> list[Path]:
    return [p for p in (root / "cache").rglob(".*.tmp") if p.is_file()]


def assert_objects_intact(root: Path) -> None:
    """Every object's bytes hash to its name (a .dir object is the JSON listing of a folder)."""
    for oid in objects(root):
        data = (root / "cache" / "files" / "md5" / oid[:2] / oid[2:]).read_bytes()
        if oid.endswith(".dir"):
            assert isinstance(json.loads(data), list), oid
        else:
            assert hashlib.md5(data).hexdigest() == oid, f"object {oid} on the remote is torn"


def pushed(result: subprocess.CompletedProcess) -> int:
    """The number of files a `dvc push` says it sent ("N files pushed"; "Everything is up to date": 0)."""
    text = result.stdout + result.stderr
    match = re.search(r"(\d+) files? pushed", text)
    assert match or "Everything is up to date" in text, text[-2000:]
    return int(match[1]) if match else 0


def assert_pulled(clone: Path, project: Path, env: dict) -> None:
    for folder in PULLED_FOLDERS:
        assert digest(clone, folder) == digest(project, folder), folder
    repro = run(["dvc", "repro"], clone, env)
    assert "Running stage" not in repro.stdout + repro.stderr, repro.stdout[-2000:]
    assert "up to date" in default_status(clone, env)


@pytest.fixture(scope="module")
def published(tiny_pipeline, tmp_path_factory) -> Path:
    project, env, _ = tiny_pipeline
    return published_repository(project, tmp_path_factory.mktemp("ssh-published") / "repo", env)


def test_push_over_ssh_then_make_reproduce_pulls_and_runs_nothing(tiny_pipeline, published, keys, tmp_path):
    project, env, _ = tiny_pipeline
    env = ssh_env(env, tmp_path / "home")
    root = tmp_path / "sftp"
    with sftp_server(root, keys) as port, remote_on(project, env, "lab", port, keys["client"]):
        started = time.perf_counter()
        sent = pushed(run(["dvc", "push"], project, env))
        push_s = time.perf_counter() - started
        assert sent == len(objects(root)) > 0 and not temporaries(root)
        assert_objects_intact(root)

        clone, reader_env = reader_clone(published, tmp_path / "reader", env)
        add_remote(clone, reader_env, "lab", port, keys["client"])
        # `make reproduce` in the clone with this venv (its setup step left out: the venv is made).
        venv = Path(sys.prefix)
        started = time.perf_counter()
        made = run(["make", "-o", str(venv / ".rgvlm-installed"), "reproduce", f"VENV={venv}"], clone, reader_env)
        reproduce_s = time.perf_counter() - started
        assert "pulled what the DVC remote has" in made.stdout, made.stdout[-2000:]
        assert "Running stage" not in made.stdout + made.stderr, made.stdout[-3000:]
        assert_pulled(clone, project, reader_env)
    print(f"dvc push over SSH: {push_s:.1f}s ({sent} files); make reproduce from it (pull, repro with nothing "
          f"to run, readme): {reproduce_s:.1f}s")


def test_a_push_killed_midway_resumes_with_only_what_is_missing(tiny_pipeline, published, keys, tmp_path):
    project, env, _ = tiny_pipeline
    env = ssh_env(env, tmp_path / "home")
    root = tmp_path / "sftp"
    with sftp_server(root, keys, WRITE_DELAY_S) as port, remote_on(project, env, "lab", port, keys["client"]):
        started = time.perf_counter()
        push = subprocess.Popen(["dvc", "push"], cwd=project, env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while len(objects(root)) < 3 and push.poll() is None:
            time.sleep(0.02)
        if push.poll() is None:
            os.killpg(push.pid, signal.SIGKILL)  # dvc and every worker it started
        push.wait()
        killed_s = time.perf_counter() - started
        assert push.returncode == -signal.SIGKILL, "the push ended before it was killed: raise WRITE_DELAY_S"
        before = objects(root)
        left = temporaries(root)  # objects caught mid-write: never under their own name
        assert_objects_intact(root)

        started = time.perf_counter()
        sent = pushed(run(["dvc", "push"], project, env))
        resume_s = time.perf_counter() - started
        after = objects(root)
        assert before < after and sent == len(after - before) > 0, (len(before), len(after), sent)
        assert_objects_intact(root)
        assert pushed(run(["dvc", "push"], project, env)) == 0

        clone, reader_env = reader_clone(published, tmp_path / "reader", env)
        add_remote(clone, reader_env, "lab", port, keys["client"])
        started = time.perf_counter()
        # --allow-missing: the optional noise sweep (optional/dvc.yaml) has never run here, so its outputs are
        # in no cache; what the default pipeline made must all come back (checked just below).
        run(["dvc", "pull", "--allow-missing"], clone, reader_env)
        pull_s = time.perf_counter() - started
        assert_pulled(clone, project, reader_env)
    print(f"over SSH, {WRITE_DELAY_S}s held per write: push killed after {killed_s:.1f}s with {len(before)} of "
          f"{len(after)} objects sent ({len(left)} temporaries left mid-write); resumed push {resume_s:.1f}s sent "
          f"{sent}; dvc pull {pull_s:.1f}s")
