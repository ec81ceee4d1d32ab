"""Reading and checking ``params.yaml``: every knob of the pipeline, validated up front.

Each pipeline section has one ``*_config`` function that turns the raw mapping into a
frozen dataclass, or raises :class:`ParamError` naming the key, the value and what is
allowed, before any expensive work starts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rgvlm.envs import MAX_SUBTASKS, MIN_SUBTASKS

MIXTURE_KINDS = ("expert", "noisy", "partial")
SPLITS = ("seen", "fresh")


class ParamError(ValueError):
    """A parameter with a value outside what is allowed."""

    def __init__(self, key: str, value: Any, expected: str):
        self.key, self.value, self.expected = key, value, expected
        super().__init__(f"params: {key}={value!r} is invalid: expected {expected}")


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """The whole parameters file as a dict."""
    with open(path, encoding="utf-8") as handle:
        params = yaml.safe_load(handle) or {}
    if not isinstance(params, dict):
        raise ParamError(str(path), type(params).__name__, "a mapping of sections")
    return params


# -- small checkers -------------------------------------------------------------------
def _section(raw: Any, name: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise ParamError(name, raw, "a mapping")
    return raw


def _get(raw: Mapping[str, Any], section: str, key: str, default: Any = ...) -> Any:
    if key in raw:
        return raw[key]
    if default is ...:
        raise ParamError(f"{section}.{key}", None, "a value (the key is missing)")
    return default


def _check_unknown(raw: Mapping[str, Any], section: str, known: set[str]) -> None:
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ParamError(f"{section}.{unknown[0]}", raw[unknown[0]], f"one of the keys {sorted(known)}")


def _int(value: Any, key: str, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParamError(key, value, "an integer")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"{'' if low is None else low}..{'' if high is None else high}"
        raise ParamError(key, value, f"an integer in {bounds}")
    return value


def _float(value: Any, key: str, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ParamError(key, value, "a number")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ParamError(key, value, f"a number in [{low}, {high}]")
    return float(value)


def _ks(value: Any, key: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ParamError(key, value, f"a non-empty list of sub-task counts in {MIN_SUBTASKS}..{MAX_SUBTASKS}")
    ks = tuple(_int(k, f"{key}[{i}]", MIN_SUBTASKS, MAX_SUBTASKS) for i, k in enumerate(value))
    if len(set(ks)) != len(ks):
        raise ParamError(key, value, "a list without repeats")
    return ks


def _str_list(value: Any, key: str, allowed: tuple[str, ...] | None = None) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) for v in value):
        raise ParamError(key, value, "a non-empty list of names")
    if allowed is not None:
        for i, v in enumerate(value):
            if v not in allowed:
                raise ParamError(f"{key}[{i}]", v, f"one of {', '.join(allowed)}")
    if len(set(value)) != len(value):
        raise ParamError(key, value, "a list without repeats")
    return tuple(value)


# -- sections -------------------------------------------------------------------------
@dataclass(frozen=True)
class EnvConfig:
    """Construction arguments of the suite's levels (shared by collection, replay, eval)."""

    room_size: int = 6
    objs_per_room: int = 2
    door_subtask_prob: float = 0.3
    steps_per_subtask: int = 64

    def kwargs(self) -> dict[str, Any]:
        return {
            "room_size": self.room_size,
            "objs_per_room": self.objs_per_room,
            "door_subtask_prob": self.door_subtask_prob,
            "steps_per_subtask": self.steps_per_subtask,
        }


def env_config(raw: Any) -> EnvConfig:
    raw = _section(raw, "env")
    _check_unknown(raw, "env", {"room_size", "objs_per_room", "door_subtask_prob", "steps_per_subtask"})
    d = EnvConfig()
    return EnvConfig(
        room_size=_int(_get(raw, "env", "room_size", d.room_size), "env.room_size", 5, 10),
        objs_per_room=_int(_get(raw, "env", "objs_per_room", d.objs_per_room), "env.objs_per_room", 2, 3),
        door_subtask_prob=_float(
            _get(raw, "env", "door_subtask_prob", d.door_subtask_prob), "env.door_subtask_prob", 0.0, 1.0
        ),
        steps_per_subtask=_int(
            _get(raw, "env", "steps_per_subtask", d.steps_per_subtask), "env.steps_per_subtask", 16, 1000
        ),
    )


@dataclass(frozen=True)
class DatasetConfig:
    """What the offline dataset holds; see :mod:`rgvlm.data.collect`."""

    seed: int
    ks: tuple[int, ...]
    episodes_per_k: int
    mixture: dict[str, float] = field(hash=False)
    noise_epsilon: float
    wander_steps: tuple[int, int]
    expert_view: str = "agent"  # what the bot plans from: "agent" (BabyAI's: its view so far) | "state" (the current state)


EXPERT_VIEWS = ("agent", "state")


def dataset_config(raw: Any) -> DatasetConfig:
    raw = _section(raw, "dataset")
    _check_unknown(
        raw, "dataset", {"seed", "ks", "episodes_per_k", "mixture", "noise_epsilon", "wander_steps", "expert_view"}
    )
    expert_view = raw.get("expert_view", "agent")
    if expert_view not in EXPERT_VIEWS:
        raise ParamError("dataset.expert_view", expert_view, f"one of {', '.join(EXPERT_VIEWS)}")
    mixture_raw = _section(_get(raw, "dataset", "mixture"), "dataset.mixture")
    for kind in mixture_raw:
        if kind not in MIXTURE_KINDS:
            raise ParamError(f"dataset.mixture.{kind}", mixture_raw[kind], f"one of the kinds {', '.join(MIXTURE_KINDS)}")
    mixture = {
        kind: _float(mixture_raw.get(kind, 0.0), f"dataset.mixture.{kind}", 0.0, 1.0) for kind in MIXTURE_KINDS
    }
    if abs(sum(mixture.values()) - 1.0) > 1e-6:
        raise ParamError("dataset.mixture", dict(mixture_raw), "shares that sum to 1")
    wander = _get(raw, "dataset", "wander_steps")
    if not isinstance(wander, (list, tuple)) or len(wander) != 2:
        raise ParamError("dataset.wander_steps", wander, "a [min, max] pair of step counts")
    low = _int(wander[0], "dataset.wander_steps[0]", 0)
    high = _int(wander[1], "dataset.wander_steps[1]", low)
    return DatasetConfig(
        seed=_int(_get(raw, "dataset", "seed"), "dataset.seed", 0, 999),
        ks=_ks(_get(raw, "dataset", "ks"), "dataset.ks"),
        episodes_per_k=_int(_get(raw, "dataset", "episodes_per_k"), "dataset.episodes_per_k", 1),
        mixture=mixture,
        noise_epsilon=_float(_get(raw, "dataset", "noise_epsilon"), "dataset.noise_epsilon", 0.0, 1.0),
        wander_steps=(low, high),
        expert_view=expert_view,
    )


@dataclass(frozen=True)
class RewardsConfig:
    """Which reward sets the rewards stage writes."""

    methods: tuple[str, ...]
    fusion_dense: tuple[str, ...]
    fusion_lambdas: tuple[float, ...]


def rewards_config(raw: Any, available: tuple[str, ...]) -> RewardsConfig:
    raw = _section(raw, "rewards")
    _check_unknown(raw, "rewards", {"methods", "fusion"})
    methods = _str_list(_get(raw, "rewards", "methods"), "rewards.methods", available)
    fusion = _section(raw.get("fusion", {"dense": [], "lambdas": []}), "rewards.fusion")
    _check_unknown(fusion, "rewards.fusion", {"dense", "lambdas"})
    dense = tuple(fusion.get("dense") or ())
    for i, name in enumerate(dense):
        if name not in methods or name == "sparse":
            raise ParamError(f"rewards.fusion.dense[{i}]", name, f"a dense method listed in rewards.methods ({', '.join(m for m in methods if m != 'sparse')})")
    if dense and "sparse" not in methods:
        raise ParamError("rewards.methods", list(methods), "a list including 'sparse' when rewards.fusion.dense is set")
    lambdas_raw = fusion.get("lambdas") or []
    if not isinstance(lambdas_raw, (list, tuple)):
        raise ParamError("rewards.fusion.lambdas", lambdas_raw, "a list of numbers >= 0")
    lambdas = tuple(_float(v, f"rewards.fusion.lambdas[{i}]", 0.0) for i, v in enumerate(lambdas_raw))
    if dense and not lambdas:
        raise ParamError("rewards.fusion.lambdas", lambdas_raw, "at least one lambda when rewards.fusion.dense is set")
    return RewardsConfig(methods=methods, fusion_dense=dense, fusion_lambdas=lambdas)


@dataclass(frozen=True)
class TrainConfig:
    """Which (reward set, seed) runs to train, and the IQL hyperparameters of all of them."""

    reward_sets: tuple[str, ...]
    seeds: tuple[int, ...]
    device: str
    iql: dict[str, Any] = field(hash=False)
    compile: bool = False  # torch.compile the vmapped update
    cuda_graphs: bool = False  # ... in mode "reduce-overhead", which captures CUDA graphs (GPU only)
    baselines: tuple[str, ...] = ()  # behaviour-cloning rows trained in the same stack (BASELINES)
    extra_seeds: tuple[int, ...] = ()  # more seeds for ...
    extra_seeds_for: tuple[str, ...] = ()  # ... these reward sets (the rows the paper's question rests on)

    @property
    def trained(self) -> tuple[str, ...]:
        """Every trained row: the reward sets, then the baselines."""
        return self.reward_sets + self.baselines

    def seeds_for(self, name: str) -> tuple[int, ...]:
        """The training seeds of one reward set or baseline."""
        return self.seeds + (self.extra_seeds if name in self.extra_seeds_for else ())


TRAIN_KEYS = {"reward_sets", "seeds", "device", "compile", "cuda_graphs", "baselines", "extra_seeds",
              "extra_seeds_for"}
#: Behaviour-cloning baselines: "bc" imitates every dataset action, "bc_success" only those of
#: successful episodes (filtered BC). Both are trained by the same stack as the IQL runs.
BASELINES = ("bc", "bc_success")


def train_config(raw: Any) -> TrainConfig:
    """``train`` holds the run list plus any :class:`rgvlm.rl.iql.IQLConfig` field."""
    from dataclasses import fields

    from rgvlm.rl.iql import IQLConfig

    raw = _section(raw, "train")
    iql_fields = {f.name for f in fields(IQLConfig)}
    _check_unknown(raw, "train", TRAIN_KEYS | iql_fields)
    seeds_raw = _get(raw, "train", "seeds")
    if not isinstance(seeds_raw, (list, tuple)) or not seeds_raw:
        raise ParamError("train.seeds", seeds_raw, "a non-empty list of integers >= 0")
    seeds = tuple(_int(s, f"train.seeds[{i}]", 0) for i, s in enumerate(seeds_raw))
    if len(set(seeds)) != len(seeds):
        raise ParamError("train.seeds", seeds_raw, "a list without repeats")
    extra_raw = raw.get("extra_seeds") or []
    if not isinstance(extra_raw, (list, tuple)):
        raise ParamError("train.extra_seeds", extra_raw, "a list of integers >= 0")
    extra = tuple(_int(s, f"train.extra_seeds[{i}]", 0) for i, s in enumerate(extra_raw))
    if len(set(seeds + extra)) != len(seeds + extra):
        raise ParamError("train.extra_seeds", extra_raw, f"seeds not already in train.seeds {list(seeds)}, without repeats")
    reward_sets = _str_list(_get(raw, "train", "reward_sets"), "train.reward_sets")
    baselines = _str_list(raw.get("baselines") or [], "train.baselines", BASELINES) if raw.get("baselines") else ()
    extra_for = _str_list(raw.get("extra_seeds_for") or [], "train.extra_seeds_for", reward_sets + baselines) \
        if raw.get("extra_seeds_for") else ()
    device = _get(raw, "train", "device", "auto")
    if device not in ("auto", "cpu", "cuda") and not str(device).startswith("cuda:"):
        raise ParamError("train.device", device, "auto, cpu, cuda or cuda:N")
    iql = {k: v for k, v in raw.items() if k in iql_fields}
    from rgvlm.rl.missions import MISSION_ENCODER_DIMS

    # The clause embedding's size follows the mission encoder (an unknown encoder fails in IQLConfig).
    encoder_dim = MISSION_ENCODER_DIMS.get(iql.get("mission_encoder", "minilm"))
    if encoder_dim is not None and iql.setdefault("mission_embed_dim", encoder_dim) != encoder_dim:
        raise ParamError("train.mission_embed_dim", iql["mission_embed_dim"],
                         f"{encoder_dim}, the size of a {iql.get('mission_encoder', 'minilm')} clause embedding "
                         "(or leave it out: it follows train.mission_encoder)")
    flags = {}
    for key in ("compile", "cuda_graphs"):
        flags[key] = raw.get(key, False)
        if not isinstance(flags[key], bool):
            raise ParamError(f"train.{key}", flags[key], "true or false")
    if flags["cuda_graphs"] and device == "cpu":
        raise ParamError("train.cuda_graphs", True, "false on device cpu (CUDA graphs need a GPU)")
    try:
        IQLConfig(**iql)
    except (TypeError, ValueError) as error:
        raise ParamError("train", iql, f"valid IQL hyperparameters ({error})") from error
    return TrainConfig(
        reward_sets=reward_sets,
        seeds=seeds,
        device=str(device),
        iql=iql,
        baselines=baselines,
        extra_seeds=extra,
        extra_seeds_for=extra_for,
        **flags,
    )


@dataclass(frozen=True)
class EvaluationConfig:
    """Where and how often each trained run is rolled out."""

    seed: int
    ks: tuple[int, ...]
    splits: tuple[str, ...]
    episodes_per_k: dict[str, int] = field(hash=False)  # per split
    bootstrap_samples: int = 2000
    device: str = "cpu"
    policies: dict[str, float] = field(default_factory=lambda: {"greedy": 0.0}, hash=False)  # name -> temperature
    workers: int = 1  # processes that roll episodes out in parallel (the result does not depend on it)


def evaluation_config(raw: Any) -> EvaluationConfig:
    raw = _section(raw, "evaluation")
    _check_unknown(raw, "evaluation", {"seed", "ks", "splits", "episodes_per_k", "bootstrap_samples", "device",
                                       "policies", "workers"})
    device = _get(raw, "evaluation", "device", "cpu")
    if device not in ("auto", "cpu", "cuda") and not str(device).startswith("cuda:"):
        raise ParamError("evaluation.device", device, "auto, cpu, cuda or cuda:N")
    splits = _str_list(_get(raw, "evaluation", "splits"), "evaluation.splits", SPLITS)
    per_k = _get(raw, "evaluation", "episodes_per_k")
    if isinstance(per_k, Mapping):
        _check_unknown(per_k, "evaluation.episodes_per_k", set(splits))
        episodes = {s: _int(per_k.get(s), f"evaluation.episodes_per_k.{s}", 1) for s in splits}
    else:
        episodes = {s: _int(per_k, "evaluation.episodes_per_k", 1) for s in splits}
    policies_raw = raw.get("policies", {"greedy": 0.0})
    if not isinstance(policies_raw, Mapping) or not policies_raw:
        raise ParamError("evaluation.policies", policies_raw, "a mapping of policy name to temperature (0 = greedy)")
    policies = {str(name): _float(t, f"evaluation.policies.{name}", 0.0) for name, t in policies_raw.items()}
    return EvaluationConfig(
        seed=_int(_get(raw, "evaluation", "seed"), "evaluation.seed", 0, 999),
        ks=_ks(_get(raw, "evaluation", "ks"), "evaluation.ks"),
        splits=splits,
        episodes_per_k=episodes,
        bootstrap_samples=_int(_get(raw, "evaluation", "bootstrap_samples", 2000), "evaluation.bootstrap_samples", 100),
        device=str(device),
        policies=policies,
        workers=_int(raw.get("workers", 1), "evaluation.workers", 1, 64),
    )


def resolve_device(device: str) -> str:
    """``auto`` means CUDA when there is a GPU, else the CPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ParamError("device", device, "auto or cpu: this machine has no CUDA GPU")
    return device


BACKENDS = ("scripted", "transformers", "openai")
LABELING_KEYS = {
    "backend", "model", "stage2_model", "base_url", "api_key_env", "max_concurrency", "timeout_s",
    "max_retries", "device", "dtype", "batch_size", "scripted", "prices", "max_failure_rate", "deadline_s",
}
#: Keys that were in ``labeling`` before they moved to RG-VLM's own section ``rg_vlm``.
MOVED_TO_RG_VLM = ("window_length", "window_stride", "frame_stride", "tile_size", "max_reasks", "fallback_score")


@dataclass(frozen=True)
class LabelingConfig:
    """The LVLM backend every labelling method that asks an LVLM shares, and how it is queried."""

    backend: str
    model: str | None
    stage2_model: str | None
    base_url: str | None
    api_key_env: str | None
    max_concurrency: int
    timeout_s: float
    max_retries: int
    device: str
    dtype: str
    batch_size: int
    scripted: dict[str, Any] = field(hash=False)
    prices: dict[str, float] = field(hash=False)  # USD per 1M prompt / completion tokens
    # Share of a method's queries allowed to end with no usable answer (fallback or dropped).
    max_failure_rate: float = 0.05
    deadline_s: float | None = None  # openai: wall-clock limit of one attempt (None: 3 x timeout_s)


def labeling_config(raw: Any) -> LabelingConfig:
    """Check ``labeling``."""
    raw = _section(raw, "labeling")
    for key in MOVED_TO_RG_VLM:
        if key in raw:
            raise ParamError(f"labeling.{key}", raw[key], f"rg_vlm.{key} instead (RG-VLM's own section)")
    _check_unknown(raw, "labeling", LABELING_KEYS)
    backend = _get(raw, "labeling", "backend", "scripted")
    if backend not in BACKENDS:
        raise ParamError("labeling.backend", backend, f"one of {', '.join(BACKENDS)}")
    model = raw.get("model")
    if backend in ("transformers", "openai") and not model:
        raise ParamError("labeling.model", model, f"a model name or path for the {backend} backend")
    base_url = raw.get("base_url")
    if backend == "openai" and not (isinstance(base_url, str) and base_url.startswith(("http://", "https://"))):
        raise ParamError("labeling.base_url", base_url, "an http(s) URL of an OpenAI-compatible server, e.g. http://localhost:8000/v1")
    scripted = _section(raw.get("scripted", {}), "labeling.scripted")
    prices = _section(raw.get("prices", {}), "labeling.prices")
    for key, value in prices.items():
        _float(value, f"labeling.prices.{key}", 0.0)
    return LabelingConfig(
        backend=backend, model=model, stage2_model=raw.get("stage2_model"), base_url=base_url,
        api_key_env=raw.get("api_key_env", "OPENAI_API_KEY"),
        max_concurrency=_int(raw.get("max_concurrency", 8), "labeling.max_concurrency", 1),
        timeout_s=_float(raw.get("timeout_s", 60.0), "labeling.timeout_s", 0.1),
        max_retries=_int(raw.get("max_retries", 5), "labeling.max_retries", 0),
        device=str(raw.get("device", "auto")), dtype=str(raw.get("dtype", "auto")),
        batch_size=_int(raw.get("batch_size", 4), "labeling.batch_size", 1),
        scripted=dict(scripted), prices={k: float(v) for k, v in prices.items()},
        max_failure_rate=_float(raw.get("max_failure_rate", 0.05), "labeling.max_failure_rate", 0.0, 1.0),
        deadline_s=None if raw.get("deadline_s") is None else _float(raw["deadline_s"], "labeling.deadline_s", 0.1, 86400.0),
    )
