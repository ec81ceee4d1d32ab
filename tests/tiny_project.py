"""A copy of the working tree as a fresh git repository on the tiny profile, for the tests that run
the real pipeline: tests/test_pipeline.py, tests/test_sweeps.py, tests/test_progress.py.
profiles/tiny.yaml is an overlay of params.yaml: the clone's params.yaml is the two merged (DVC
and the stages read a whole params.yaml)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from rgvlm.params import load_profile, write_params

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "profiles" / "tiny.yaml"
#: Where a reproduced run's cached outputs lie: what a pull from a remote must bring back byte for byte.
PULLED_FOLDERS = ("data", "outputs/labels", "outputs/rewards", "outputs/models", "outputs/lvlm_cache")


def tiny_params() -> dict:
    """The tiny profile's parameters: the overlay merged onto this tree's params.yaml."""
    return load_profile(TINY)


#: The default pipeline's files: what `dvc repro` reproduces and these tests bring up to date. A plain
#: `dvc status` also lists the stages of optional/dvc.yaml (outside `dvc repro`, never run here).
DEFAULT_PIPELINE = ("dvc.yaml", "data.dvc")


def default_status(cwd: Path, env: dict) -> str:
    """`dvc status` of the default pipeline (:data:`DEFAULT_PIPELINE`): its stdout."""
    return run(["dvc", "status", *DEFAULT_PIPELINE], cwd, env).stdout


def run(cmd: list[str], cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def tiny_clone(dst: Path, params: dict | None = None) -> dict:
    """A copy of the working tree (tracked and untracked-but-not-ignored files) in ``dst`` as a
    fresh git repository on the tiny profile (``params``: the profile's parameters, changed), with
    data/ built and committed. Returns the environment to run commands in (the copy's package on
    PYTHONPATH, not the one installed in the venv; the stages' progress lines on)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True)
    for name in filter(None, listed.stdout.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dst / name)
    if params is None:  # the overlay merged: DVC and the stages read a whole params.yaml
        write_params(tiny_params(), dst / "params.yaml", "The tiny profile (profiles/tiny.yaml) merged onto params.yaml.")
    else:
        (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONPATH": str(dst),  # the clone's package, not the one installed in the venv
        "DVC_NO_ANALYTICS": "1",
        "DVC_SITE_CACHE_DIR": str(dst / ".cache" / "dvc-site"),
        "MPLCONFIGDIR": str(dst / ".cache" / "matplotlib"),
        "RGVLM_PROGRESS": "1",  # the stages' progress lines on stderr, whatever the caller's setting
        "GIT_AUTHOR_NAME": "rgvlm tests", "GIT_AUTHOR_EMAIL": "tests@rgvlm.invalid",
        "GIT_COMMITTER_NAME": "rgvlm tests", "GIT_COMMITTER_EMAIL": "tests@rgvlm.invalid",
    }
    run(["git", "init", "-q"], dst, env)
    run(["git", "add", "-A"], dst, env)
    run(["git", "commit", "-qm", "tiny profile"], dst, env)
    run([sys.executable, "-m", "rgvlm.data", "collect", "--workers", "1"], dst, env)
    run(["dvc", "commit", "-f", "-q", "data.dvc"], dst, env)
    return env


def tiny_project(dst: Path) -> tuple[Path, dict, subprocess.CompletedProcess]:
    """:func:`tiny_clone` with `dvc repro` run once: ``dst``, its environment, the repro's result."""
    env = tiny_clone(dst)
    return dst, env, run(["dvc", "repro"], dst, env)


def digest(root: Path, folder: str) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root / folder``."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((root / folder).rglob("*")) if p.is_file()}


def published_repository(project: Path, dst: Path, env: dict) -> Path:
    """What an author publishes beside the DVC cache: a snapshot of ``project``'s git repository in
    ``dst`` with its dvc.lock, data.dvc and reports/ (the `cache: false` outputs travel in git)
    committed. A reader's ``git clone`` of it then has everything but the cached outputs."""
    run(["git", "clone", "-q", str(project), str(dst)], dst.parent, env)
    for name in ("dvc.lock", "data.dvc"):
        (dst / name).write_bytes((project / name).read_bytes())
    run(["cp", "-r", str(project / "reports"), str(dst)], dst.parent, env)
    run(["git", "add", "-A"], dst, env)
    run(["git", "commit", "-qm", "reproduced", "--allow-empty"], dst, env)
    return dst


def reader_clone(published: Path, dst: Path, env: dict) -> tuple[Path, dict]:
    """A reader's fresh ``git clone`` of :func:`published_repository` in ``dst`` and the environment
    to run commands in there (its own package on PYTHONPATH, its own DVC site cache)."""
    run(["git", "clone", "-q", str(published), str(dst)], dst.parent, env)
    return dst, {**env, "PYTHONPATH": str(dst), "DVC_SITE_CACHE_DIR": str(dst / ".cache" / "dvc-site")}
