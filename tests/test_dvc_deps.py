"""Every stage's deps in dvc.yaml cover the rgvlm modules its notebook imports (tools/dvc_deps.py)."""

from __future__ import annotations

import ast
import copy
import json

import pytest
import yaml

from rgvlm import paths
from rgvlm.pipeline import load_stages
from rgvlm.rewards.registry import LABELLED_METHODS
from tools.dvc_deps import NOT_DEPS, check, imported_by_name, imported_names, notebook_modules, stage_missing

STAGES = load_stages()
RAW = yaml.safe_load(paths.DVC_YAML.read_text())["stages"]


@pytest.mark.parametrize("stage", list(STAGES))
def test_stage_deps_cover_the_modules_its_notebook_imports(stage):
    missing = stage_missing(STAGES[stage], by_name=imported_by_name(stage))
    assert not missing, (f"stage {stage!r} in dvc.yaml does not depend on {', '.join(missing)}, which its notebook "
                         "imports: add them (or their directory) to its deps, or DVC leaves its outputs stale")


def test_what_no_stage_depends_on_imports_nothing_of_rgvlm():
    """A module of NOT_DEPS (progress lines on the terminal) is run by stages but required by none:
    it must not bring in a module that could change an output."""
    for name in NOT_DEPS:
        assert not imported_names(ast.parse((paths.ROOT / name).read_text())), name
    assert "rgvlm/progress.py" not in notebook_modules(paths.ROOT / "notebooks" / "04_train.ipynb")


def test_checker_catches_a_planted_omission(tmp_path):
    stages = copy.deepcopy(RAW)
    label = stages["label"]["do"]["deps"]
    label.remove("rgvlm/rewards")  # every rewards module goes missing
    label[label.index("rgvlm/methods")] = "rgvlm/methods/rg_vlm.py"  # every other method's module too
    label.remove("rgvlm/sandbox.py")  # only VLM-CaR runs it, through its module (imported by name)
    stages["train"]["deps"] = [d for d in stages["train"]["deps"] if d != "rgvlm/rl"]  # a directory dep
    planted = tmp_path / "dvc.yaml"
    # The label stage's foreach reads the registry of this tree (a vars path relative to dvc.yaml's folder).
    registry = paths.ROOT / "rgvlm" / "rewards" / "registry.py"
    planted.write_text(yaml.safe_dump({"vars": [f"{registry}:METHOD_TABLE"], "stages": stages}))

    missing = check(planted)
    assert "rgvlm/sandbox.py" in missing["label@vlm_car"] and "rgvlm/methods/vlm_car.py" in missing["label@vlm_car"]
    assert "rgvlm/methods/erl_vlm.py" in missing["label@erl_vlm"] and "rgvlm/methods/vlm_car.py" not in missing["label@erl_vlm"]
    assert "rgvlm/sandbox.py" not in missing["label@rg_vlm"] and "rgvlm/rewards/label_stage.py" in missing["label@rg_vlm"]
    assert {"rgvlm/rl/iql.py", "rgvlm/rl/runs.py"} <= set(missing["train"])
    assert all(m.startswith("rgvlm/rl/") for m in missing["train"])
    assert set(missing) == {f"label@{method}" for method in LABELLED_METHODS} | {"train"}


def test_closure_follows_relative_imports_packages_and_lazy_imports(tmp_path):
    files = {
        "rgvlm/__init__.py": "",  # empty: runs nothing, never required
        "rgvlm/a/__init__.py": "from .b import f\n",
        "rgvlm/a/b.py": '"""Doc."""\nfrom .. import c\n\ndef f():\n    from rgvlm.d import e\n',
        "rgvlm/c.py": "X = 1\n",
        "rgvlm/d/__init__.py": '"""Only a docstring."""\n',
        "rgvlm/d/e.py": "import rgvlm.f as g\n",
        "rgvlm/f.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import rgvlm.unused\n",
        "rgvlm/unused.py": "Y = 2\n",
        "rgvlm/other.py": "Z = 3\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    notebook = tmp_path / "nb.ipynb"
    cells = [{"cell_type": "markdown", "source": "import rgvlm.other"},
             {"cell_type": "code", "source": ["%matplotlib inline\n", "from rgvlm.a import f\n"]}]
    notebook.write_text(json.dumps({"cells": cells}))

    assert notebook_modules(notebook, tmp_path) == {
        "rgvlm/a/__init__.py", "rgvlm/a/b.py", "rgvlm/c.py", "rgvlm/d/e.py", "rgvlm/f.py"}
