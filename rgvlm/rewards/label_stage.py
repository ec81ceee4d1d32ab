"""The labelling stage ``label@<method>`` (``notebooks/02_label.ipynb``): one call labels the
dataset with one registered method (:mod:`rgvlm.rewards.registry`) and writes what the stage
outputs, the same files for every method:

- ``outputs/labels/<method>/<method>.npy`` and ``.json`` (:func:`~rgvlm.rewards.base.save_rewards`),
  with the method's own files beside them (VLM-CaR's programs, a reward model);
- ``reports/metrics/labelling_<method>.json``: the provenance and the cost record (LVLM calls,
  cache hits, tokens, time and an estimate in USD from ``labelling.prices``).

A method that asks an LVLM gets the (stage-1, stage-2) clients of the shared ``labelling``
backend, answering through the response cache ``outputs/lvlm_cache/<method>/``; the folder is
made for every method (it is a stage output), and stays empty for one that asks no LVLM.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rgvlm import paths
from rgvlm.atomic import write_json_atomic
from rgvlm.data.storage import OfflineDataset, load_dataset
from rgvlm.params import ParamError, load_params
from rgvlm.rewards.base import RewardResult, save_rewards
from rgvlm.rewards.registry import LVLM_SECTION, METHODS, RewardMethod


@dataclass
class LabelRun:
    """What one labelling run made, for its notebook to show."""

    method: RewardMethod
    dataset: OfflineDataset
    result: RewardResult
    out_dir: Path

    @property
    def cost(self) -> dict[str, Any]:
        return self.result.cost

    def description(self) -> Any:
        """The method's module docstring, as Markdown."""
        from IPython.display import Markdown

        return Markdown(self.method.description)

    def annotator(self) -> str:
        lvlm = self.result.provenance.get("lvlm")
        if not lvlm:
            return "no LVLM"
        return "scripted annotator, not an LVLM" if lvlm["backend"] == "scripted" else f"{lvlm['backend']}: {lvlm['model']}"

    def figure(self) -> Any:
        """The reward of the steps that complete a sub-task against the others (privileged diagnostic)."""
        from rgvlm.plots import reward_by_completion

        data = self.dataset
        return reward_by_completion(self.result.rewards, data.completed_per_step > 0,
                                    f"{self.method.name} reward ({self.annotator()})")

    def diagnostic(self) -> Any:
        """The method's own diagnostic (None when it has none)."""
        show = self.method.diagnostic
        return None if show is None else show(self.dataset, self.result, self.out_dir)


def stage_sections(method: RewardMethod, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The params sections the method's stage reads, from ``params`` (default: params.yaml)."""
    params = load_params() if params is None else params
    missing = [section for section in method.sections if section not in params]
    if missing:
        raise ParamError(missing[0], None, f"a section of params.yaml (label@{method.name} reads it)")
    return {section: params[section] for section in method.sections}


def check_method(name: str, params: Mapping[str, Any] | None = None) -> tuple[RewardMethod, Any, Any]:
    """The method ``name``, its checked config and, when it asks an LVLM, the checked ``labelling``
    config (else None): every setting checked before any work, a bad one named by its key.
    ``params``: the sections (what the pipeline injects); None reads params.yaml."""
    if name not in METHODS:
        raise ParamError("method", name, f"one of the registered methods {', '.join(METHODS)}")
    method = METHODS[name]
    sections = stage_sections(method, params)
    config = method.config_from_params(sections[method.section])
    lvlm = None
    if method.uses_lvlm:
        from rgvlm.params import labelling_config

        lvlm = labelling_config(sections[LVLM_SECTION])
    return method, config, lvlm


def label_with(method: RewardMethod, config: Any, lvlm: Any, dataset: OfflineDataset, cache_dir: Path,
               out_dir: Path) -> RewardResult:
    """Label ``dataset`` with ``method`` through the ``lvlm`` backend (if it asks one), answering
    through the response cache in ``cache_dir``; the method writes its own files into ``out_dir``.
    The result's cost is the stage's cost record (calls, hits, tokens, time, USD estimate)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    clients = usage = policy = None
    if lvlm is not None:
        from rgvlm.vlm import cached_clients, failure_policy

        stage1, stage2, usage = cached_clients(lvlm, cache_dir)  # fails here on a bad backend setting
        clients, policy = (stage1, stage2), failure_policy(lvlm, cache_dir)
    result, stats = method.label(dataset, clients, config, out_dir, policy)
    if usage is not None:
        from rgvlm.rewards.queries import labelling_cost

        result.cost = labelling_cost(usage, stats, lvlm.prices)
    return result


def run(name: str, params: Mapping[str, Any] | None = None) -> LabelRun:
    """Label the dataset with the method ``name`` and write the stage's outputs (module docstring).

    ``params``: the stage's params sections (what the pipeline injects); None reads params.yaml.
    A bad setting fails before any query, naming the key."""
    method, config, lvlm = check_method(name, params)
    dataset = load_dataset(paths.DATA)
    out_dir = paths.LABELS / method.name
    result = label_with(method, config, lvlm, dataset, paths.LVLM_CACHE / method.name, out_dir)
    save_rewards(out_dir, result)
    write_json_atomic(paths.METRICS / f"labelling_{method.name}.json", {"provenance": result.provenance, "cost": result.cost})
    return LabelRun(method, dataset, result, out_dir)
