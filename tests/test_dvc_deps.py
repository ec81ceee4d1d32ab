"""Every stage's deps in dvc.yaml cover the rgvlm modules its notebook imports (rgvlm.deps)."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from rgvlm import paths
from rgvlm.deps import check, notebook_modules, stage_missing

STAGES = yaml.safe_load(paths.DVC_YAML.read_text())["stages"]


@pytest.mark.parametrize("stage", list(STAGES))
def test_stage_deps_cover_the_modules_its_notebook_imports(stage):
    missing = stage_missing(STAGES[stage])
    assert not missing, (f"stage {stage!r} in dvc.yaml does not depend on {', '.join(missing)}, which its notebook "
                         "imports: add them (or their directory) to its deps, or DVC leaves its outputs stale")


def test_checker_catches_a_planted_omission(tmp_path):
    stages = copy.deepcopy(STAGES)
    deps = stages["label_erl_vlm"]["deps"]
    deps.remove("rgvlm/rewards/rg_vlm.py")  # the omission issue 11 found
    stages["train"]["deps"] = [d for d in stages["train"]["deps"] if d != "rgvlm/rl"]  # a directory dep
    planted = tmp_path / "dvc.yaml"
    planted.write_text(yaml.safe_dump({"stages": stages}))

    missing = check(planted)
    assert missing["label_erl_vlm"] == ["rgvlm/rewards/rg_vlm.py"]
    assert {"rgvlm/rl/iql.py", "rgvlm/rl/runs.py"} <= set(missing["train"])
    assert all(m.startswith("rgvlm/rl/") for m in missing["train"])
    assert set(missing) == {"label_erl_vlm", "train"}


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
