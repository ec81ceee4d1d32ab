"""Packaging and pipeline hygiene: dependency lists agree, notebooks are paired and
parameterised, every stage declares only sections that exist."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import jupytext
import pytest
import yaml

from rgvlm.params import load_params
from rgvlm.pipeline import load_stages

ROOT = Path(__file__).resolve().parent.parent


def test_environment_yml_mirrors_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["test"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict))
    assert set(pip) == wanted
    for package in ("jupyterlab", "papermill", "torch", "transformers", "seaborn", "pandas", "dvc"):
        assert any(re.match(rf"{package}\b", spec) for spec in wanted), package


def test_notebooks_are_paired_parameterised_and_in_sync():
    for name, stage in load_stages().items():
        notebooks = [d for d in stage["deps"] if d.endswith(".ipynb")]
        assert len(notebooks) == 1, name
        ipynb = ROOT / notebooks[0]
        paired = ipynb.with_suffix(".py")
        nb = json.loads(ipynb.read_text())
        assert nb["metadata"]["kernelspec"]["name"] == "python3"
        tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{ipynb.name} needs exactly one 'parameters' cell"
        # The .py twin and the .ipynb hold the same cells.
        from_py = jupytext.read(paired)
        from_ipynb = jupytext.read(ipynb)
        assert [c.source for c in from_py.cells] == [c.source for c in from_ipynb.cells], f"run `make notebooks` for {ipynb.name}"
        assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"), f"{ipynb.name} has outputs"


def test_stages_declare_existing_params_and_profiles_share_sections():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    tiny = load_params(ROOT / "profiles" / "tiny.yaml")  # the overlay, merged
    assert set(params) == set(tiny)
    for name, stage in load_stages().items():
        assert stage["cmd"] == f"python -m rgvlm.pipeline {name}"
        for key in stage.get("params", []):
            assert key.split(".")[0] in params, (name, key)


@pytest.mark.parametrize("profile", ["params.yaml", "profiles/tiny.yaml", "profiles/gpu.yaml"])
def test_every_profile_passes_the_stage_validators(profile):
    """Each profile's sections pass the checks the stage runner applies before a kernel starts."""
    from rgvlm.pipeline import validate_parameters

    params = load_params(ROOT / profile)
    with_cpu = {**params, "train": {**params["train"], "device": "auto"}} if profile.endswith("gpu.yaml") else params
    if profile.endswith("gpu.yaml"):  # CUDA graphs need a GPU; check the rest of the section on this machine
        with_cpu["train"] = {**with_cpu["train"], "cuda_graphs": False}
    validate_parameters(with_cpu)
    assert set(params) >= {"env", "dataset", "labelling", "rg_vlm", "vlm_car", "erl_vlm", "rl_vlm_f", "embedding", "rewards",
                           "train", "evaluation", "report"}
