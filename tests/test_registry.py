"""The registry of reward methods (rgvlm.rewards.registry) is the one list every consumer reads."""

from __future__ import annotations

import importlib

import pytest
import yaml

from rgvlm import paths
from rgvlm.pipeline import literal_assignments, load_stages
from rgvlm.report import figure4_left_reward_sets
from rgvlm.rewards import REWARD_METHODS
from rgvlm.rewards.registry import (
    COMPARISON_METHODS,
    LABELLED_METHODS,
    LVLM_SECTION,
    METHOD_TABLE,
    METHODS,
    PAPER_METHOD,
    RewardMethod,
)
from rgvlm.verify import EXACT_METRICS
from rgvlm.vlm.scripted import ScriptedTruth, SegmentTruth


def test_every_consumer_reads_the_registry():
    assert LABELLED_METHODS == tuple(METHODS) and LABELLED_METHODS[0] == "rg_vlm"  # the paper's method first
    assert set(REWARD_METHODS) == {"sparse", "oracle", *LABELLED_METHODS}
    assert (PAPER_METHOD, *COMPARISON_METHODS) == LABELLED_METHODS
    assert figure4_left_reward_sets([*LABELLED_METHODS, "sparse", "oracle", "x"], "x") == [
        "sparse", "x", *LABELLED_METHODS, "oracle"]
    assert {f"reports/metrics/labelling_{m}.json" for m in LABELLED_METHODS} <= set(EXACT_METRICS)


@pytest.mark.parametrize("name", LABELLED_METHODS)
def test_each_method_names_real_prompts_and_scripted_query_kinds(name):
    method = METHODS[name]
    assert method.section == name and method.sections == ((LVLM_SECTION, name) if method.uses_lvlm else (name,))
    assert method.description.strip()
    method.config_from_params(None)  # every key of a section is optional
    assert callable(method.label) and (method.diagnostic is None or callable(method.diagnostic))
    for prompt in method.prompts:
        assert (paths.ROOT / "prompts" / prompt).is_file(), prompt
    assert bool(method.queries) == method.uses_lvlm == bool(method.prompts)
    for query in method.queries:
        module, _, cls = query.rpartition(".")
        truth = getattr(importlib.import_module(module), cls)
        assert truth is SegmentTruth or issubclass(truth, ScriptedTruth), query


def test_every_prompt_file_belongs_to_a_method():
    registered = {prompt for method in METHODS.values() for prompt in method.prompts}
    assert registered == {path.name for path in (paths.ROOT / "prompts").glob("*.txt")}


def test_the_labelling_stage_runs_every_registered_method_with_its_own_sections():
    spec = yaml.safe_load(paths.DVC_YAML.read_text())
    # dvc.yaml's label stage is expanded over the registry's table itself (no hand-kept list), which
    # DVC can read only while it is a literal: what DVC reads is the registry, in its order.
    assert "rgvlm/rewards/registry.py:METHOD_TABLE" in spec["vars"]
    assert spec["stages"]["label"]["foreach"] == "${METHOD_TABLE}"
    assert literal_assignments(paths.ROOT / "rgvlm/rewards/registry.py")["METHOD_TABLE"] == METHOD_TABLE
    stages = load_stages()
    assert tuple(name.partition("@")[2] for name in stages if name.startswith("label@")) == LABELLED_METHODS
    for name, method in METHODS.items():
        stage = stages[f"label@{name}"]
        assert set(stage["params"]) == set(method.sections), name  # its section, and the backend if it asks an LVLM
        assert "prompts" in stage["deps"] and f"outputs/labels/{name}" in stage["outs"]


def test_a_bad_table_entry_is_named():
    with pytest.raises(ValueError, match=r"METHOD_TABLE\['x'\].*backend"):
        RewardMethod.from_entry("x", {"module": "rgvlm.methods.x", "backend": "other"})
    with pytest.raises(ValueError, match=r"METHOD_TABLE\['x'\]"):
        RewardMethod.from_entry("x", {"module": "rgvlm.methods.x", "backend": "x", "prompt": ["x.txt"]})
    assert not RewardMethod.from_entry("x", {"module": "rgvlm.methods.x", "backend": "x"}).uses_lvlm


def test_the_runner_expands_foreach_stages_as_dvc_does():
    from dvc.repo import Repo

    ours = load_stages()  # every pipeline file's (optional/dvc.yaml's too), by name
    with Repo(str(paths.ROOT)) as repo:
        theirs = {stage.name: stage for stage in repo.index.stages if getattr(stage, "name", None) in ours}
    assert set(theirs) == set(ours)
    for name, stage in theirs.items():
        spec = ours[name]
        assert stage.cmd == spec["cmd"]
        files = [str(d.def_path) for d in stage.deps if type(d).__name__ != "ParamsDependency"]
        assert files == [str(d) for d in spec["deps"]], name
        params = [key for d in stage.deps if type(d).__name__ == "ParamsDependency" for key in d.params]
        assert params == spec.get("params", []), name
        declared = [next(iter(o)) if isinstance(o, dict) else o for o in [*spec.get("outs", []), *spec.get("metrics", []),
                                                                          *spec.get("plots", [])]]
        assert sorted(str(o.def_path) for o in stage.outs) == sorted(declared), name
