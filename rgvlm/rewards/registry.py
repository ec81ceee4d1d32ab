"""The registered reward methods: ONE table, read by the labelling stage, the pipeline, the
rewards stage, the report, ``make verify`` and the tests.

A *labelled* method maps the offline dataset to one reward per transition by asking an LVLM
(or an embedding model) in its own ``label@<method>`` stage, which writes
``outputs/labels/<method>/`` (:mod:`rgvlm.rewards.label_stage`). Every method follows one
interface, in its module under ``rgvlm/rewards/``:

- ``config_from_params(raw) -> config``: its params section checked, or
  :class:`~rgvlm.params.ParamError` naming ``<method>.<key>``;
- ``label(dataset, clients, config, out_dir) -> (RewardResult, stats)`` (:class:`LabelFunction`):
  the labels, and the counts that go into the stage's cost record; it writes any file of its
  own (programs, a reward model) into ``out_dir``;
- optionally ``diagnostic(dataset, result, out_dir)``: what its notebook shows besides the
  reward of the steps that complete a sub-task against the others.

Adding a method is its module, its prompt files, its params section (``params.yaml`` and the
two profiles), its entry in :data:`METHODS` and in the ``label`` stage's ``foreach`` in
``dvc.yaml`` (``tests/test_registry.py`` checks that the two agree), and its test.

This module stays light (no import of a method's module until it is used): every stage that
reads the list of methods imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from rgvlm.data.storage import OfflineDataset
    from rgvlm.rewards.base import RewardResult
    from rgvlm.vlm.base import LVLMClient

#: The params section of the LVLM backend that every method asking an LVLM shares.
LVLM_SECTION = "labelling"


class LabelFunction(Protocol):
    """A method's ``label``: ``clients`` is the (stage-1, stage-2) pair of cached LVLM clients,
    or None for a method that asks no LVLM."""

    def __call__(self, dataset: OfflineDataset, clients: tuple[LVLMClient, LVLMClient] | None, config: Any,
                 out_dir: Path) -> tuple[RewardResult, dict[str, Any]]: ...


@dataclass(frozen=True)
class RewardMethod:
    """One labelled reward method."""

    name: str  # also its params section, its foreach key in dvc.yaml and its folder outputs/labels/<name>/
    module: str  # the module that holds config_from_params, label (and diagnostic)
    uses_lvlm: bool = True  # asks an LVLM through the shared LVLM_SECTION backend and its response cache
    prompts: tuple[str, ...] = ()  # the files under prompts/ it reads
    #: Ground-truth classes of the queries it sends, which the scripted annotator answers
    #: (``rgvlm.vlm.scripted``: a SegmentTruth or a ScriptedTruth).
    queries: tuple[str, ...] = ()
    #: Reads the suite's symbolic observations (the observation API, the describer, the reward
    #: models' state encoder). False: frames, actions and the mission are all it reads, so it
    #: can relabel any dataset (``python -m rgvlm.relabel``), not only the suite's.
    needs_suite_observations: bool = True

    @property
    def section(self) -> str:
        """The params section the method owns."""
        return self.name

    @property
    def sections(self) -> tuple[str, ...]:
        """Every params section its labelling stage reads (and declares in dvc.yaml)."""
        return (LVLM_SECTION, self.section) if self.uses_lvlm else (self.section,)

    def _attribute(self, name: str, default: Any = ...) -> Any:
        module = import_module(self.module)
        return getattr(module, name) if default is ... else getattr(module, name, default)

    def config_from_params(self, raw: Any) -> Any:
        """The method's params section, checked."""
        return self._attribute("config_from_params")(raw)

    @property
    def label(self) -> LabelFunction:
        return self._attribute("label")

    @property
    def diagnostic(self) -> Any:
        return self._attribute("diagnostic", None)

    @property
    def description(self) -> str:
        """The method module's docstring."""
        return import_module(self.module).__doc__ or ""


#: Every labelled method, in the order of the report's tables and figures.
METHODS: dict[str, RewardMethod] = {method.name: method for method in (
    RewardMethod("rg_vlm", "rgvlm.rewards.rg_vlm", prompts=("rg_vlm_stage1.txt", "rg_vlm_stage2.txt"),
                 queries=("rgvlm.vlm.scripted.SegmentTruth",), needs_suite_observations=False),
    RewardMethod("vlm_car", "rgvlm.rewards.vlm_car",
                 prompts=("vlm_car_decompose.txt", "vlm_car_program.txt", "vlm_car_feedback.txt"),
                 queries=("rgvlm.rewards.vlm_car.DecompositionTruth", "rgvlm.rewards.vlm_car.ProgramTruth")),
    RewardMethod("erl_vlm", "rgvlm.rewards.erl_vlm", prompts=("erl_vlm_stage1.txt", "erl_vlm_stage2.txt"),
                 queries=("rgvlm.rewards.erl_vlm.RatingTruth",)),
    RewardMethod("rl_vlm_f", "rgvlm.rewards.rl_vlm_f", prompts=("rl_vlm_f_stage1.txt", "rl_vlm_f_stage2.txt"),
                 queries=("rgvlm.rewards.rl_vlm_f.PreferenceTruth",)),
    RewardMethod("gvl", "rgvlm.rewards.gvl", prompts=("gvl_stage1.txt", "gvl_stage2.txt"),
                 queries=("rgvlm.rewards.gvl.ProgressTruth",), needs_suite_observations=False),
    RewardMethod("embedding", "rgvlm.rewards.embedding", uses_lvlm=False),
)}

#: Their names: the reward sets a labelling stage writes to ``outputs/labels/<method>/``.
LABELLED_METHODS: tuple[str, ...] = tuple(METHODS)
#: The paper's method; the others are the methods it is compared with.
PAPER_METHOD = "rg_vlm"
COMPARISON_METHODS: tuple[str, ...] = tuple(name for name in METHODS if name != PAPER_METHOD)
