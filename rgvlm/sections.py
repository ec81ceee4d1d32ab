"""The one config door: every section of ``params.yaml`` mapped to the checker that owns it.

:func:`check_params` checks a whole parameters file, or the sections one stage declares, before
any work: each section through its checker (a bad value raises :class:`ParamError` naming the
dotted key, the value and what is allowed), a section no checker owns is an error naming it, and
then the rules between sections that are both at hand (the report's fusion, split and policy
against ``rewards`` and ``evaluation``; the noise sweep's levels against ``labelling``). The pipeline's stage runner, the experiments and
``python -m rgvlm.profiles`` all come in through here.

Where the checkers live:

- the pipeline's own sections (``env``, ``dataset``, ``labelling``, ``rewards``, ``train``,
  ``evaluation``, ``report``): :mod:`rgvlm.params`;
- the peer baseline's ``peer``: :mod:`rgvlm.peer.d3rlpy_baseline`;
- the noise sweep's ``noise_sweep`` (the stage outside the default ``dvc repro``): :mod:`rgvlm.noise_sweep`;
- every labelled reward method's section (``rg_vlm``, ``vlm_car``, ...): the method's own module
  (its ``config_from_params``), found through the methods' registry
  (:data:`rgvlm.rewards.registry.METHODS`), so a method added there brings its section with it;
- anything else: :func:`register_section`, called from the module that owns the section.

Checkers are named as ``"module:function"`` and imported only when their section is checked:
a stage that reads ``env`` does not import torch to check it. This module sits on the top floor
(with the pipeline): it knows every owner, none of them knows it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from importlib import import_module
from typing import Any

from rgvlm.config import ParamError, as_section

Checker = Callable[[Any], Any]

#: Section -> its checker ("module:function", imported when used). Reward methods are added from
#: their registry by :func:`section_checkers`.
CORE_SECTIONS: dict[str, str] = {
    "env": "rgvlm.params:env_config",
    "dataset": "rgvlm.params:dataset_config",
    "labelling": "rgvlm.params:labelling_config",
    "rewards": "rgvlm.sections:rewards_section",
    "train": "rgvlm.params:train_config",
    "peer": "rgvlm.peer.d3rlpy_baseline:peer_config",
    "evaluation": "rgvlm.params:evaluation_config",
    "report": "rgvlm.params:report_config",
    "noise_sweep": "rgvlm.noise_sweep:noise_sweep_config",
}

_REGISTERED: dict[str, Checker | str] = {}


def register_section(name: str, checker: Checker | str) -> None:
    """Give a section that is neither a pipeline section nor a registered reward method's (a plugin's,
    say) its checker, from the module that owns it. A name that is already owned fails: two owners
    of one section would each accept what the other forbids."""
    known = section_checkers()
    if name in known and _REGISTERED.get(name) is not checker:
        raise ValueError(f"params section {name!r} already has a checker ({_describe(known[name])})")
    _REGISTERED[name] = checker


def rewards_section(raw: Any):
    """``rewards``, read against the reward sets there are (a layer above the params module)."""
    from rgvlm.params import rewards_config
    from rgvlm.rewards import REWARD_METHODS

    return rewards_config(raw, tuple(REWARD_METHODS))


def section_checkers() -> dict[str, Checker | str]:
    """Every section's checker (a callable or a lazy ``"module:function"``), in params.yaml's order."""
    from rgvlm.rewards.registry import METHODS  # light: no method module is imported here

    checkers: dict[str, Checker | str] = dict(CORE_SECTIONS)
    for method in METHODS.values():
        # Each method's module owns its section (its config_from_params), imported when checked.
        checkers[method.section] = f"{method.module}:config_from_params"
    for name, checker in _REGISTERED.items():
        checkers.setdefault(name, checker)
    order = ("env", "dataset", "labelling", *(m.section for m in METHODS.values()), "rewards", "train", "peer",
             "evaluation", "report", "noise_sweep")
    return {name: checkers[name] for name in sorted(checkers, key=lambda n: (order.index(n) if n in order else len(order), n))}


def _resolve(checker: Checker | str) -> Checker:
    if callable(checker):
        return checker
    module, _, function = checker.partition(":")
    return getattr(import_module(module), function)


def _describe(checker: Checker | str) -> str:
    return checker if isinstance(checker, str) else f"{checker.__module__}:{checker.__qualname__}"


def check_section(name: str, raw: Any) -> Any:
    """One section's config, checked by its owner (ParamError naming ``<name>.<key>``)."""
    checkers = section_checkers()
    if name not in checkers:
        raise ParamError(name, _summary(raw), f"one of the sections {', '.join(checkers)} (no checker owns `{name}`)")
    return _resolve(checkers[name])(raw)


def check_params(params: Mapping[str, Any], sections: Iterable[str] | None = None) -> dict[str, Any]:
    """Check ``params`` (a whole parameters file, or the sections a stage declares) before any work:
    every section (or those named in ``sections``, which must be there) by its checker, then the
    rules between sections. Returns each checked section's config object."""
    params = as_section(params, "params")
    names = list(params) if sections is None else list(sections)
    checkers = section_checkers()
    for name in names:  # every name first: a misspelt section fails before a slow checker runs
        if name not in params:
            raise ParamError(name, None, "a section of the parameters file (the key is missing)")
        if name not in checkers:
            raise ParamError(name, _summary(params[name]),
                             f"one of the sections {', '.join(checkers)} (no checker owns `{name}`)")
    configs = {name: _resolve(checkers[name])(params[name]) for name in names}
    for rule in CROSS_SECTION_RULES:
        rule(configs)
    return configs


def _summary(raw: Any) -> Any:
    """A section's value as an error shows it: its keys, not a screenful of values."""
    return sorted(map(str, raw)) if isinstance(raw, Mapping) else raw


# -- rules between sections (each runs when the sections it reads were checked together) ------
def _report_against_evaluation(configs: dict[str, Any]) -> None:
    report, evaluation = configs.get("report"), configs.get("evaluation")
    if report is None or evaluation is None:
        return
    if report.split not in evaluation.splits:
        raise ParamError("report.split", report.split, f"an evaluated split (evaluation.splits: {', '.join(evaluation.splits)})")
    if report.policy is not None and report.policy not in evaluation.policies:
        raise ParamError("report.policy", report.policy,
                         f"an evaluated policy (evaluation.policies: {', '.join(evaluation.policies)})")


def _report_against_rewards(configs: dict[str, Any]) -> None:
    report, rewards = configs.get("report"), configs.get("rewards")
    if report is None or rewards is None or "rg_vlm" not in rewards.fusion_dense:
        return  # no RG-VLM fusion to draw: the report stage says so against what was evaluated
    if report.headline_lambda not in rewards.fusion_lambdas:
        raise ParamError("report.headline_lambda", report.headline_lambda,
                         f"one of the fused lambdas (rewards.fusion.lambdas: {', '.join(map(str, rewards.fusion_lambdas))})")


def _noise_sweep_against_labelling(configs: dict[str, Any]) -> None:
    sweep, labelling = configs.get("noise_sweep"), configs.get("labelling")
    if sweep is None or labelling is None:
        return
    from rgvlm.noise_sweep import check_levels_against_labelling

    check_levels_against_labelling(sweep, labelling)


CROSS_SECTION_RULES: tuple[Callable[[dict[str, Any]], None], ...] = (
    _report_against_evaluation, _report_against_rewards, _noise_sweep_against_labelling)
