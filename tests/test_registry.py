"""The registry of reward methods (rgvlm.rewards.registry) is the one list every consumer reads."""

from __future__ import annotations

import importlib

import pytest

from rgvlm import paths
from rgvlm.report import figure4_left_methods
from rgvlm.rewards import REWARD_METHODS
from rgvlm.rewards.registry import COMPARISON_METHODS, LABELLED_METHODS, LVLM_SECTION, METHODS, PAPER_METHOD
from rgvlm.verify import EXACT_METRICS
from rgvlm.vlm.scripted import ScriptedTruth, WindowTruth


def test_every_consumer_reads_the_registry():
    assert LABELLED_METHODS == ("rg_vlm", "vlm_car", "erl_vlm", "rl_vlm_f", "embedding")
    assert set(REWARD_METHODS) == {"sparse", "oracle", *LABELLED_METHODS}
    assert (PAPER_METHOD, *COMPARISON_METHODS) == LABELLED_METHODS
    assert figure4_left_methods([*LABELLED_METHODS, "sparse", "oracle", "x"], "x") == [
        "sparse", "x", *LABELLED_METHODS, "oracle"]
    assert {f"reports/metrics/labeling_{m}.json" for m in LABELLED_METHODS} <= set(EXACT_METRICS)


@pytest.mark.parametrize("name", LABELLED_METHODS)
def test_each_method_names_real_prompts_and_scripted_query_kinds(name):
    method = METHODS[name]
    assert method.section == name and method.sections == ((LVLM_SECTION, name) if method.uses_lvlm else (name,))
    assert method.description.strip()
    method.config_from_params(None)  # every key of a section is optional
    for prompt in method.prompts:
        assert (paths.ROOT / "prompts" / prompt).is_file(), prompt
    assert bool(method.queries) == method.uses_lvlm == bool(method.prompts)
    for query in method.queries:
        module, _, cls = query.rpartition(".")
        truth = getattr(importlib.import_module(module), cls)
        assert truth is WindowTruth or issubclass(truth, ScriptedTruth), query


def test_every_prompt_file_belongs_to_a_method():
    registered = {prompt for method in METHODS.values() for prompt in method.prompts}
    assert registered == {path.name for path in (paths.ROOT / "prompts").glob("*.txt")}
