"""The registered reward methods: ONE table, read by the labelling stage, the pipeline, the
rewards stage, the report, ``make verify`` and the tests.

A *labelled* method maps the offline dataset to one reward per transition by asking an LVLM
(or an embedding model) in its own ``label@<method>`` stage, which writes
``outputs/labels/<method>/`` (:mod:`rgvlm.rewards.label_stage`). Every method follows one
interface, in its module under ``rgvlm/methods/``:

- ``config_from_params(raw) -> config``: its params section checked, or
  :class:`~rgvlm.params.ParamError` naming ``<method>.<key>``;
- ``label(dataset, clients, config, out_dir, failure_policy) -> (RewardResult, stats)`` (:class:`LabelFunction`):
  the labels, and the counts that go into the stage's cost record; it writes any file of its
  own (programs, a reward model) into ``out_dir``;
- optionally ``diagnostic(dataset, result, out_dir)``: what its notebook shows besides the
  reward of the steps that complete a sub-task against the others.

Adding a method is its module in ``rgvlm/methods/``, its prompt files under ``prompts/`` (named by
its entry), its params section in ``params.yaml`` (the profiles are overlays: they need it only to
differ), its entry in :data:`METHOD_TABLE`, and its test: ``dvc.yaml`` expands its ``label`` stage
over :data:`METHOD_TABLE` (read as DVC ``vars``), so the stage ``label@<method>`` follows from the
entry (``docs/methods.md``, "Adding a method"; ``tests/test_add_method.py`` adds one in a clone).

This module stays light (no import of a method's module until it is used): every stage that
reads the list of methods imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from rgvlm.data.storage import OfflineDataset
    from rgvlm.rewards.base import RewardResult
    from rgvlm.vlm.base import FailurePolicy, LVLMClient

#: The params section of the LVLM backend that every method asking an LVLM shares.
LVLM_SECTION = "labelling"


class LabelFunction(Protocol):
    """A method's ``label``: ``clients`` is the (stage-1, stage-2) pair of cached LVLM clients,
    or None for a method that asks no LVLM; ``failure_policy`` is ``labelling.max_failure_rate``
    and where the raw answers are (None with no clients, or from a caller that sets no limit),
    which the method enforces through :func:`rgvlm.rewards.base.check_failure_rate`."""

    def __call__(self, dataset: OfflineDataset, clients: tuple[LVLMClient, LVLMClient] | None, config: Any,
                 out_dir: Path, failure_policy: FailurePolicy | None = None) -> tuple[RewardResult, dict[str, Any]]: ...


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

    @classmethod
    def from_entry(cls, name: str, entry: Mapping[str, Any]) -> RewardMethod:
        """The method of a :data:`METHOD_TABLE` entry, checked: the entry is hand-written, and
        ``backend`` is what dvc.yaml's ``label@<name>`` declares as its other params section."""
        fields = {"module", "backend", "prompts", "queries", "needs_suite_observations"}
        if set(entry) - fields or "module" not in entry or entry.get("backend") not in (LVLM_SECTION, name):
            raise ValueError(f"METHOD_TABLE[{name!r}] = {entry!r}: expected the keys module, backend (required: "
                             f"{LVLM_SECTION!r} for a method that asks an LVLM, else {name!r}) and optionally "
                             "prompts, queries, needs_suite_observations")
        return cls(name, entry["module"], uses_lvlm=entry["backend"] == LVLM_SECTION,
                   prompts=tuple(entry.get("prompts", ())), queries=tuple(entry.get("queries", ())),
                   needs_suite_observations=entry.get("needs_suite_observations", True))

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


#: Every labelled method, in the order of the report's tables and figures: one literal entry each
#: (:class:`RewardMethod`'s fields). Literal on purpose: ``dvc.yaml`` reads this table as its ``vars``
#: (DVC parses literal assignments of a Python file) and expands its ``label`` stage over it, one
#: ``label@<method>`` per entry, whose ``params`` are ``backend`` and the method's own section. So an
#: entry added here is a stage, with no edit of dvc.yaml; changing it leaves the other stages as they were.
METHOD_TABLE = {
    "rg_vlm": {"module": "rgvlm.methods.rg_vlm", "backend": "labelling",
               "prompts": ["rg_vlm_stage1.txt", "rg_vlm_stage2.txt"],
               "queries": ["rgvlm.vlm.scripted.SegmentTruth"], "needs_suite_observations": False},
    "vlm_car": {"module": "rgvlm.methods.vlm_car", "backend": "labelling",
                "prompts": ["vlm_car_decompose.txt", "vlm_car_program.txt", "vlm_car_feedback.txt"],
                "queries": ["rgvlm.methods.vlm_car.DecompositionTruth", "rgvlm.methods.vlm_car.ProgramTruth"]},
    "erl_vlm": {"module": "rgvlm.methods.erl_vlm", "backend": "labelling",
                "prompts": ["erl_vlm_stage1.txt", "erl_vlm_stage2.txt"],
                "queries": ["rgvlm.methods.erl_vlm.RatingTruth"]},
    "rl_vlm_f": {"module": "rgvlm.methods.rl_vlm_f", "backend": "labelling",
                 "prompts": ["rl_vlm_f_stage1.txt", "rl_vlm_f_stage2.txt"],
                 "queries": ["rgvlm.methods.rl_vlm_f.PreferenceTruth"]},
    "gvl": {"module": "rgvlm.methods.gvl", "backend": "labelling", "prompts": ["gvl_stage1.txt", "gvl_stage2.txt"],
            "queries": ["rgvlm.methods.gvl.ProgressTruth"], "needs_suite_observations": False},
    "embedding": {"module": "rgvlm.methods.embedding", "backend": "embedding"},
}

METHODS: dict[str, RewardMethod] = {name: RewardMethod.from_entry(name, entry) for name, entry in METHOD_TABLE.items()}

#: Their names: the reward sets a labelling stage writes to ``outputs/labels/<method>/``.
LABELLED_METHODS: tuple[str, ...] = tuple(METHODS)
#: The paper's method; the others are the methods it is compared with.
PAPER_METHOD = "rg_vlm"
COMPARISON_METHODS: tuple[str, ...] = tuple(name for name in METHODS if name != PAPER_METHOD)
