"""Every stage's executed notebook records what ran it: Python and the installed versions of the
packages that make its outputs (issue 27, item 5); the real pipeline writes it in rgvlm.pipeline."""

from __future__ import annotations

import json
from importlib import metadata

import nbformat

from rgvlm.pipeline import environment_record, installed_versions, record_environment


def test_installed_versions_cover_what_makes_the_outputs():
    versions = installed_versions()
    for name in ("rgvlm", "numpy", "torch", "gymnasium", "minigrid", "minari", "transformers", "pandas"):
        assert versions[name] == metadata.version(name), name
    assert "pytest" not in versions  # the test extra makes no output


def test_the_record_lands_in_the_executed_notebook(tmp_path):
    path = tmp_path / "stage.ipynb"
    notebook = nbformat.v4.new_notebook()
    notebook.cells.append(nbformat.v4.new_code_cell("1 + 1"))
    nbformat.write(notebook, path)
    record = environment_record()
    record_environment(path, record)
    stored = json.loads(path.read_text())
    assert stored["metadata"]["rgvlm"]["environment"] == json.loads(json.dumps(record))
    assert "".join(stored["cells"][0]["source"]) == "1 + 1"
    assert not [p for p in tmp_path.iterdir() if p.name != "stage.ipynb"]  # written atomically, nothing left
