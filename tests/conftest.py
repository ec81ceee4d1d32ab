"""Shared fixtures: small datasets built by the project's own generator."""

from __future__ import annotations

import os

import pytest

pytest.register_assert_rewrite("tests.report_pages")  # its asserts show what differs

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from rgvlm.data.collect import collect_dataset, params_record  # noqa: E402
from rgvlm.data.storage import load_dataset, save_dataset  # noqa: E402
from rgvlm.params import dataset_config, env_config  # noqa: E402

TINY_DATASET = {
    "seed": 0,
    "ks": [1, 2, 3],
    "episodes_per_k": 6,
    "mixture": {"expert": 0.5, "noisy": 0.25, "partial": 0.25},
    "noise_epsilon": 0.3,
    "wander_steps": [4, 8],
}


def build_dataset(directory, raw=None):
    env_cfg, cfg = env_config({}), dataset_config(raw or TINY_DATASET)
    episodes, arrays, stats = collect_dataset(env_cfg, cfg)
    save_dataset(directory, {**params_record(env_cfg, cfg), "bot_failures": stats["bot_failures"]}, episodes, arrays)
    return load_dataset(directory)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """18 episodes, k = 1..3, every kind of the mixture."""
    return build_dataset(tmp_path_factory.mktemp("tiny-data"))


@pytest.fixture(scope="session")
def rendered_report(tmp_path_factory):
    """``index.html`` and ``README.md`` rendered by rgvlm.report from the committed metrics into a
    fresh folder, beside copies of the committed figures and noise-sweep result (the report stage
    draws those; copied here so that no pipeline has to run)."""
    import shutil
    from pathlib import Path

    from rgvlm.params import load_params
    from rgvlm.report import build_report
    from rgvlm.rewards import fused_name

    root = Path(__file__).resolve().parent.parent
    reports = root / "reports"
    out = tmp_path_factory.mktemp("report")
    shutil.copytree(reports / "figures", out / "figures")
    (out / "tuning").mkdir()
    for name in ("noise_sweep.json", "noise_sweep.png"):
        shutil.copy2(reports / "tuning" / name, out / "tuning" / name)
    report = load_params(root / "params.yaml")["report"]
    build_report(reports / "metrics", out, headline=fused_name("rg_vlm", float(report["headline_lambda"])),
                 split=report["split"], policy=report["policy"])
    return out


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """A copy of the working tree as a fresh git repository on the tiny profile, data/ built and
    `dvc repro` run once (tests/tiny_project.py): (its folder, the environment to run commands in,
    the repro's result). Shared by tests/test_pipeline.py and tests/test_sweeps.py; a test that
    changes it puts it back."""
    from tests.tiny_project import tiny_project

    return tiny_project(tmp_path_factory.mktemp("clone") / "rgvlm")


@pytest.fixture(scope="module")
def minari_root(tmp_path_factory):
    """An empty local Minari root, set as ``MINARI_DATASETS_PATH`` for the module's tests."""
    root = tmp_path_factory.mktemp("minari")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MINARI_DATASETS_PATH", str(root))
        yield root
