"""Reading and checking ``params.yaml``: every knob of the pipeline, validated up front.

:func:`load_params` is the one loader of parameters files: a profile (an overlay of params.yaml,
``profiles/*.yaml``) comes back merged, and ``-S KEY=VALUE`` overrides (the syntax of ``dvc exp
run -S``) are merged by the same rules (:func:`apply_overrides`). Which checker owns each
section is :mod:`rgvlm.sections`.

Each pipeline section is a config dataclass (:mod:`rgvlm.config`: its fields say what they
allow) built by one ``*_config`` function, which raises :class:`ParamError` naming the key, the
value and what is allowed, before any expensive work starts. :class:`IQLConfig`, the learner's
hyperparameters that ``train`` holds, is defined here too, with the choices it checks, so that
this layer imports nothing from ``rgvlm.rl`` (which imports it from here).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rgvlm.atomic import write_bytes_atomic
from rgvlm.config import Config, ParamError, as_section, param  # ParamError: what callers catch
from rgvlm.envs import CLAUSE_VOCABULARY, MAX_CLAUSE_WORDS, MAX_SUBTASKS, MIN_SUBTASKS

MIXTURE_KINDS = ("expert", "noisy", "partial", "decoy", "detour")
SPLITS = ("seen", "fresh")
EXPERT_VIEWS = ("agent", "state")
#: Behaviour-cloning baselines: "bc" imitates every dataset action, "bc_success" only those of
#: successful episodes (filtered BC). Both are trained by the same stack as the IQL runs.
BASELINES = ("bc", "bc_success")
BACKENDS = ("scripted", "transformers", "openai")
#: How a backend answers a scored query (rgvlm.vlm.token_probs): generate and parse the text, or
#: read the scores' token probabilities; and what a score's distribution becomes.
SCORINGS = ("generate", "token_probs")
TOKEN_REDUCES = ("expectation", "argmax")
#: Keys that were in ``labelling`` before they moved to RG-VLM's own section ``rg_vlm``.
MOVED_TO_RG_VLM = ("window_length", "window_stride", "frame_stride", "tile_size", "max_reasks", "fallback_score")
#: Sections that were renamed: an old name in a params file fails, naming the new one.
RENAMED_SECTIONS = {"labeling": "labelling"}
DEVICES = "auto, cpu, cuda or cuda:N"


def device_name(value: str) -> bool:
    """Whether ``value`` names a torch device a section may ask for (:data:`DEVICES`)."""
    return value in ("auto", "cpu", "cuda") or value.startswith("cuda:")


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """The whole parameters file as a dict. A profile (an overlay of params.yaml, such as
    ``profiles/gpu.yaml``) comes back merged onto the file it extends (:func:`load_profile`, the
    one loader), so every reader of a parameters file reads a profile the same way."""
    params = load_profile(path)
    for old, new in RENAMED_SECTIONS.items():
        if old in params:
            raise ParamError(old, params[old], f"no section `{old}`: it is now spelt `{new}` (rename it in {path})")
    return params


# -- the one loader: parameters files, profiles as overlays, `dvc exp run -S` overrides ------------
# A profile (profiles/tiny.yaml, profiles/gpu.yaml) holds only what differs from the parameters file
# it names in its top-level ``extends`` key (a path relative to the profile); :func:`merge` puts it
# onto that file:
# - mappings merge key by key, at every depth; any other value (a list, a number, a string, null)
#   replaces the base's value whole: a list is never appended to;
# - a key the base lacks is an error naming it (a misspelt key would otherwise be read by nothing),
#   unless it is written ``+key`` (add a key the base lacks: a setting whose default the base uses);
# - ``~key`` (its value left empty) removes the base's key, so that the section's default applies;
#   ``++key`` sets a key whether or not the base has it.
# ``+``, ``~`` and ``++`` are Hydra's, the grammar of ``dvc exp run -S``: an override
# ``-S train.beta=30`` (:func:`parse_override`) is the one-key overlay it reads as, merged by the
# same rules, so a profile, an experiment's ``-S`` and a DVC experiment say one thing one way.
# DVC reads params.yaml itself: a profile it runs on is written out merged (``python -m
# rgvlm.profiles gpu --out params.yaml``, :func:`write_params`). docs/configuration.md.
#: The top-level key of an overlay naming the file it changes (relative to the overlay).
EXTENDS = "extends"
ADD, REMOVE, FORCE = "+", "~", "++"
#: The first line of a parameters file written by :func:`write_params`: a profile already merged,
#: which no overlay may be merged onto (the overlays say what differs from the CPU profile).
WRITTEN = "# Merged parameters written by rgvlm.profiles"
PROFILES = Path(__file__).resolve().parent.parent / "profiles"


def read_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file's top level, which must be a mapping (an empty file is an empty one)."""
    with open(path, encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParamError(str(path), type(data).__name__, "a mapping of sections")
    return data


def merge(base: Mapping[str, Any], overlay: Mapping[str, Any], where: str = "", source: str = "the overlay",
          base_name: str = "params.yaml") -> dict[str, Any]:
    """``base`` changed by ``overlay`` (the module docstring's rules); neither is modified.
    ``where`` is the dotted key of ``base`` (for errors), ``source`` and ``base_name`` say in
    errors where the overlay and the base come from."""
    merged = copy.deepcopy(dict(base))
    for raw_key, value in overlay.items():
        if not isinstance(raw_key, str):
            raise ParamError(f"{where}{raw_key}", value, f"a name (a key of {source})")
        key, op = _split_op(raw_key)
        dotted = f"{where}{key}"
        if op == REMOVE:
            if value is not None:
                raise ParamError(f"{where}{raw_key}", value, f"no value: `{raw_key}` removes {dotted} from {base_name}")
            if key not in merged:
                raise ParamError(dotted, None, f"a key of {base_name} to remove ({source} writes ~{key}, "
                                               f"but {base_name} has no {dotted})")
            del merged[key]
        elif op == ADD:
            if key in merged:
                raise ParamError(dotted, value, f"a key {base_name} lacks, to add it with +{key} "
                                                f"({base_name} has {dotted}: write it without the +)")
            merged[key] = copy.deepcopy(value)
        elif key not in merged and op != FORCE:
            raise ParamError(dotted, value, f"a key of {base_name} ({source} can only change the keys "
                                            f"{base_name} has: is it misspelt? write +{key} to add a key it lacks)")
        elif isinstance(merged.get(key), Mapping) and isinstance(value, Mapping):
            merged[key] = merge(merged[key], value, f"{dotted}.", source, base_name)
        else:
            merged[key] = copy.deepcopy(value)  # lists and scalars replace the base's value whole
    return merged


def _split_op(key: str) -> tuple[str, str]:
    for op in (FORCE, ADD, REMOVE):  # "++" before "+"
        if key.startswith(op):
            return key[len(op):], op
    return key, ""


def profile_path(profile: str | Path) -> Path:
    """``tiny`` -> ``profiles/tiny.yaml``; a path (anything with a ``/`` or a suffix) as it is."""
    text = str(profile)
    if os.sep in text or "/" in text or text.endswith((".yaml", ".yml")):
        return Path(profile)
    path = PROFILES / f"{text}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in PROFILES.glob("*.yaml"))
        raise ParamError("profile", text, f"one of {', '.join(known)} (profiles/*.yaml) or a path to a parameters file")
    return path


def load_profile(profile: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The parameters of a file: itself, or, for an overlay (a top-level ``extends``), the file it
    extends (itself perhaps an overlay) merged with it. ``profile``: a path, or a profile's name."""
    path = profile_path(profile)
    data = read_mapping(path)
    if EXTENDS not in data:
        return data
    base_ref = data.pop(EXTENDS)
    if not isinstance(base_ref, str) or not base_ref:
        raise ParamError(f"{path}: {EXTENDS}", base_ref, "the path of the parameters file this overlay changes")
    base = (path.parent / base_ref).resolve()
    if base in _seen or base == path.resolve():
        raise ParamError(f"{path}: {EXTENDS}", base_ref, "a file that does not extend itself (a cycle of overlays)")
    if not base.exists():
        # The likeliest cause: an overlay copied over params.yaml, the way whole profiles were used.
        raise ParamError(f"{path}: {EXTENDS}", base_ref,
                         f"an existing file ({base} is missing). {path} is an overlay, not a whole parameters file: "
                         "write a profile out merged with `python -m rgvlm.profiles NAME --out params.yaml` "
                         "(restore a params.yaml overwritten by an overlay with `git checkout params.yaml`)")
    if base.read_text(encoding="utf-8").startswith(WRITTEN):
        raise ParamError(f"{path}: {EXTENDS}", base_ref,
                         f"the CPU profile, but {base} is itself a merged profile written by rgvlm.profiles: "
                         f"restore it first (`git checkout {base.name}`)")
    return merge(load_profile(base, (*_seen, path.resolve())), data, source=str(path), base_name=base.name)


# -- overrides: `dvc exp run -S` -------------------------------------------------------------
def parse_override(text: str) -> dict[str, Any]:
    """One ``-S`` override as the overlay it means: ``train.beta=30`` -> ``{"train": {"beta": 30}}``,
    ``+train.compile=true`` -> ``{"train": {"+compile": True}}``, ``~train.extra_seeds`` ->
    ``{"train": {"~extra_seeds": None}}``. The value is read as YAML (``[1, 2]``, ``null``, ``'a b'``),
    as DVC's grammar reads the common cases; DVC's ``params.yaml:`` file prefix is accepted.
    A sweep (``train.beta=3,10``: one experiment per value) is DVC's ``--queue`` business, not an
    override: it fails, as do an empty key and a missing ``=``."""
    where = f"-S {text}"
    body = text.strip()
    if body.startswith("params.yaml:"):
        body = body[len("params.yaml:"):]
    elif ":" in body.partition("=")[0]:
        raise ParamError(where, text, "KEY=VALUE of params.yaml (the only parameters file here)")
    key, op = _split_op(body.partition("=")[0].strip() if not body.startswith(REMOVE) else body.strip())
    if op == REMOVE:
        if "=" in body:
            raise ParamError(where, text, f"~{key} with no value (it removes the key)")
        value = None
    else:
        if "=" not in body:
            raise ParamError(where, text, "KEY=VALUE, e.g. train.beta=30 (or +KEY=VALUE to add, ~KEY to remove)")
        raw_value = body.partition("=")[2].strip()
        if _top_level_comma(raw_value):
            raise ParamError(where, text, "one value (a comma-separated sweep is `dvc exp run --queue -S`'s; "
                                          "quote it or use [..] for a list)")
        value = yaml.safe_load(raw_value) if raw_value else None
    parts = key.split(".")
    if not key or any(not part for part in parts):
        raise ParamError(where, text, "a dotted key of params.yaml, e.g. train.beta or dataset.mixture.expert")
    overlay: dict[str, Any] = {f"{op}{parts[-1]}": value}
    for part in reversed(parts[:-1]):
        overlay = {part: overlay}
    return overlay


def _top_level_comma(value: str) -> bool:
    """Whether ``value`` has a comma outside brackets and quotes (Hydra's sweep)."""
    depth, quote = 0, ""
    for char in value:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            return True
    return False


def apply_overrides(params: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """``params`` with each ``-S`` override merged in, in order (a copy; errors name the key)."""
    merged = copy.deepcopy(dict(params))
    for text in overrides:
        merged = merge(merged, parse_override(text), source=f"-S {text}")
    return merged


def dump(params: Mapping[str, Any]) -> str:
    """The YAML text of merged parameters (sections and keys in their order)."""
    return yaml.safe_dump(dict(params), sort_keys=False, default_flow_style=None, width=110)


def write_params(params: Mapping[str, Any], path: str | Path, header: str = "") -> None:
    """Write merged parameters to ``path`` atomically (DVC never reads a half-written file)."""
    path = Path(path)
    text = WRITTEN + "\n" + "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines()) + dump(params)
    write_bytes_atomic(path, text.encode("utf-8"))


# -- sections -------------------------------------------------------------------------
@dataclass(frozen=True)
class EnvConfig(Config):
    """Construction arguments of the suite's levels (shared by collection, replay, eval)."""

    SECTION = "env"
    room_size: int = param(6, low=5, high=10)
    objs_per_room: int = param(2, low=2, high=3)
    door_subtask_prob: float = param(0.3, low=0.0, high=1.0)
    steps_per_subtask: int = param(64, low=16, high=1000)

    def kwargs(self) -> dict[str, Any]:
        return {
            "room_size": self.room_size,
            "objs_per_room": self.objs_per_room,
            "door_subtask_prob": self.door_subtask_prob,
            "steps_per_subtask": self.steps_per_subtask,
        }


def env_config(raw: Any) -> EnvConfig:
    return EnvConfig.from_section(raw)


@dataclass(frozen=True)
class DatasetConfig(Config):
    """What the offline dataset holds; see :mod:`rgvlm.data.collect`."""

    SECTION = "dataset"
    seed: int = param(low=0, high=999)
    ks: tuple[int, ...] = param(low=MIN_SUBTASKS, high=MAX_SUBTASKS, nonempty=True, unique=True)
    episodes_per_k: int = param(low=1)
    mixture: dict[str, float] = param(hash=False, keys=MIXTURE_KINDS, low=0.0, high=1.0)  # kind -> share
    noise_epsilon: float = param(low=0.0, high=1.0)
    wander_steps: tuple[int, int] = param(low=0, expected="a [min, max] pair of step counts")
    expert_view: str = param("agent", choices=EXPERT_VIEWS)  # what the bot plans from: "agent" (BabyAI's: its view so far) | "state" (the current state)

    def check(self) -> None:
        # A kind left out has no share; every kind is listed, in MIXTURE_KINDS order.
        self._normalise(mixture={kind: self.mixture.get(kind, 0.0) for kind in MIXTURE_KINDS})
        if abs(sum(self.mixture.values()) - 1.0) > 1e-6:
            raise ParamError("dataset.mixture", self.mixture, "shares that sum to 1")
        low, high = self.wander_steps
        if high < low:
            raise ParamError("dataset.wander_steps[1]", high, f"an integer in {low}..")


def dataset_config(raw: Any) -> DatasetConfig:
    return DatasetConfig.from_section(raw)


@dataclass(frozen=True)
class FusionConfig(Config):
    """``rewards.fusion``: sparse + lambda * dense, one reward set per (dense, lambda)."""

    SECTION = "rewards.fusion"
    dense: tuple[str, ...] = param((), unique=True)
    lambdas: tuple[float, ...] = param((), low=0.0)


@dataclass(frozen=True)
class RewardsConfig(Config):
    """Which reward sets the rewards stage writes."""

    SECTION = "rewards"
    methods: tuple[str, ...] = param(nonempty=True, unique=True)
    fusion: FusionConfig = param(default_factory=FusionConfig)

    @property
    def fusion_dense(self) -> tuple[str, ...]:
        return self.fusion.dense

    @property
    def fusion_lambdas(self) -> tuple[float, ...]:
        return self.fusion.lambdas

    def check(self) -> None:
        dense_methods = [m for m in self.methods if m != "sparse"]
        for i, name in enumerate(self.fusion.dense):
            if name not in dense_methods:
                raise ParamError(f"rewards.fusion.dense[{i}]", name,
                                 f"a dense method listed in rewards.methods ({', '.join(dense_methods)})")
        if self.fusion.dense and "sparse" not in self.methods:
            raise ParamError("rewards.methods", list(self.methods),
                             "a list including 'sparse' when rewards.fusion.dense is set")
        if self.fusion.dense and not self.fusion.lambdas:
            raise ParamError("rewards.fusion.lambdas", [], "at least one lambda when rewards.fusion.dense is set")


def rewards_config(raw: Any, available: tuple[str, ...]) -> RewardsConfig:
    """Check ``rewards``; ``available`` are the reward methods there are (rgvlm.rewards, a layer above)."""
    config = RewardsConfig.from_section(raw)
    for i, name in enumerate(config.methods):
        if name not in available:
            raise ParamError(f"rewards.methods[{i}]", name, f"one of {', '.join(available)}")
    return config


# -- IQL: the learner's hyperparameters (train's other keys) ---------------------------------
#: State encoders of the learner (rgvlm.rl.networks): "grid" one-hot/CNN over the grid,
#: "entities" object-centric tokens with mission FiLM.
STATE_ENCODERS = ("grid", "entities")
#: How the entity encoder finds, for each clause and role, the entity the clause names:
#: "attention": learned queries from the clause embedding over learned keys of the entity tokens;
#: "lexical": the clause's words are matched against each entity's type and colour names (needs
#: the clause word codes, ``train.mission_encoder: tokens``); only which word positions name which
#: role is learned (see :class:`rgvlm.rl.networks.EntityStateEncoder`).
GROUNDINGS = ("attention", "lexical")
#: How a reward set is scaled before training (see :func:`rgvlm.rl.runs.scale_rewards`).
REWARD_SCALES = ("none", "return_range")
ADVANTAGES = ("q", "td")  # rgvlm.rl.iql.advantages
#: Values per clause of each mission encoder's embedding (rgvlm.rl.missions): the clause word
#: codes (a one-hot word per position) and all-MiniLM-L6-v2's sentence vector. The order is
#: MISSION_ENCODERS'. ``train.mission_embed_dim`` follows ``train.mission_encoder``.
MISSION_ENCODER_DIMS = {"tokens": MAX_CLAUSE_WORDS * len(CLAUSE_VOCABULARY), "minilm": 384}
#: What the learner reads as its mission (``train.mission_view``; rgvlm.rl.missions.observation_missions).
MISSION_VIEWS = ("whole", "remaining")
#: What the networks' matmuls compute in (rgvlm.rl.multirun.precision_context): "fp32", or "bf16"
#: (autocast: matmuls in bfloat16, parameters, Adam state and losses stay float32).
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class IQLConfig(Config):
    """Hyper-parameters of IQL and sizes of the networks. Validated on construction.

    Every field is a ``train`` key; errors name it ``train.<field>``."""

    SECTION = "train"
    # Saved as given in every checkpoint and run fingerprint (an int stays an int): converting
    # would change the bytes of the runs trained before.
    FLOATS_AS_FLOAT = False

    gamma: float = param(0.99, low=0.0, below=1.0)  # discount factor
    tau: float = param(0.7, above=0.0, below=1.0)  # expectile of the value loss; 0.5 = mean, -> 1 = max over data actions
    beta: float = param(3.0, low=0.0)  # inverse temperature of the advantage weights exp(beta * adv); 0 = plain BC
    adv_clip: float = param(100.0, above=0.0)  # upper clip of the advantage weights
    lr: float = param(3e-4, above=0.0)  # Adam learning rate used for critic, value and policy
    batch_size: int = param(256, low=1)  # transitions per update (used by the caller's sampler)
    polyak: float = param(0.005, above=0.0, high=1.0)  # target <- (1-polyak)*target + polyak*online; 1 = copy
    hidden_dim: int = param(256, low=1)  # width of the hidden layers of every head MLP
    num_layers: int = param(2, low=0)  # number of hidden layers of every head MLP
    grid_height: int = param(11, low=1)  # rows H of the symbolic grid
    grid_width: int = param(11, low=1)  # columns W of the symbolic grid
    num_actions: int = param(6, low=2)  # size of the discrete action space
    mission_slots: int = param(6, low=1)  # clause slots S of the mission tensor
    mission_embed_dim: int = param(384, low=1)  # sentence-embedding size E of a clause
    cell_embed_dim: int = param(16, low=1)  # embedding size of a grid cell (type + colour + state tables)
    conv_channels: int = param(32, low=0)  # channels of the two 3x3 convolutions of the grid encoder; 0 = none (MLP)
    obs_feature_dim: int = param(128, low=1)  # output size of the grid+carry encoder
    slot_dim: int = param(32, low=1)  # per-clause projection size of the mission encoder
    mission_feature_dim: int = param(128, low=1)  # output size of the mission encoder
    state_feature_dim: int = param(256, low=1)  # output size of the joint state encoder (input of head MLPs)
    egocentric: bool = False  # re-express the grid around the agent (centre, facing up) before encoding
    encoder: str = param("grid", choices=STATE_ENCODERS)  # "grid" (one-hot/CNN over the grid) or "entities" (object-centric, mission FiLM)
    entity_dim: int = param(64, low=1)  # entities encoder: token width
    max_entities: int = param(16, low=1)  # entities encoder: doors/objects encoded
    patch: int = param(2, low=0)  # entities encoder: cells on each side of the agent in its local egocentric patch
    grounding: str = param("attention", choices=GROUNDINGS)  # entities encoder: "attention" | "lexical"
    # entities + lexical: read which clause is current from the state (the first whose effect does
    # not hold) and give the policy that clause's entities (rgvlm.rl.networks.ClauseTracker)
    clause_tracking: bool = False
    mission_encoder: str = param("minilm", choices=tuple(MISSION_ENCODER_DIMS))  # "minilm" sentence vectors | "tokens" clause word codes
    # What the learner reads as its mission: the "whole" mission, or the clauses "remaining" by the
    # progress it tracks from its own observations (rgvlm.envs.tracking; never the privileged one)
    mission_view: str = param("whole", choices=MISSION_VIEWS)
    adv_normalise: bool = False  # divide advantages by their batch std before exp(beta * A)
    # What the policy step weights actions by (rgvlm.rl.iql.advantages): "q" = Q(s, a) - V(s) (the IQL
    # paper), "td" = the transition's own (n-step) TD error r + gamma^m V(s') - V(s), which needs only V.
    advantage: str = param("q", choices=ADVANTAGES)
    # One encoder: the critic and value heads read the policy encoder's state features, detached
    # (the encoder is trained by the policy loss alone); False = each network its own encoder.
    shared_encoder: bool = False
    # Rewards summed over up to n_step transitions of the episode before bootstrapping from V:
    # value information travels n steps per update instead of one (the data must be built with
    # the same n_step and gamma: rgvlm.rl.multirun.DeviceTransitions). 1 = the IQL paper's target.
    n_step: int = param(1, low=1)
    reward_scale: str = param("none", choices=REWARD_SCALES)  # "none" | "return_range": rewards / range of returns (rgvlm.rl.runs.scale_rewards)
    holdout_fraction: float = param(0.0, low=0.0, below=1.0)  # share of episodes (per k) never trained on: the critic diagnostic's data
    num_steps: int = param(1_000_000, low=0)  # total gradient updates of a run
    log_every: int = param(1_000, low=1)  # updates between two on_log calls
    checkpoint_every: int = param(50_000, low=1)  # updates between two checkpoints
    # Least wall-clock seconds between two multi-run stack checkpoints (rgvlm.rl.runs): at a
    # checkpoint_every step the stack is written only if this long has passed since the last write
    # (or the start); 0 = at every checkpoint_every step. The critic diagnostic keeps checkpoint_every.
    checkpoint_interval_s: float = param(0.0, low=0.0)
    # Opt-in, for speed: "bf16" runs the forward passes of training and of the policy's evaluation
    # under bfloat16 autocast (2.7x the fp32 matmul peak on an AVX512-BF16 CPU). Recorded in a run's
    # config only when not "fp32" (rgvlm.rl.iql.config_record), so fp32 runs keep their bytes.
    precision: str = param("fp32", choices=PRECISIONS)

    def check(self) -> None:
        if self.grounding == "lexical" and (self.encoder != "entities" or self.mission_encoder != "tokens"
                                            or self.mission_embed_dim != MISSION_ENCODER_DIMS["tokens"]):
            raise ParamError("train.grounding", self.grounding,
                             "'attention' unless encoder is 'entities' and mission_encoder is 'tokens' "
                             "(lexical grounding matches the clause's words against the entities' type and colour)")
        if self.clause_tracking and self.grounding != "lexical":
            raise ParamError("train.clause_tracking", self.clause_tracking,
                             "false unless grounding is 'lexical' (it reads the clauses' lexically grounded entities)")
        if self.patch >= min(self.grid_height, self.grid_width):
            raise ParamError("train.patch", self.patch,
                             f"an integer >= 0 and < the grid's smaller side ({min(self.grid_height, self.grid_width)})")


@dataclass(frozen=True)
class TrainConfig(Config):
    """Which (reward set, seed) runs to train, and the IQL hyperparameters of all of them."""

    SECTION = "train"
    reward_sets: tuple[str, ...] = param(nonempty=True, unique=True)
    seeds: tuple[int, ...] = param(low=0, nonempty=True, unique=True)
    device: str = param("auto", test=device_name, expected=DEVICES)
    iql: IQLConfig = param(default_factory=IQLConfig, inline=True)  # every other key of the section
    compile: bool = False  # torch.compile the vmapped update
    cuda_graphs: bool = False  # ... in mode "reduce-overhead", which captures CUDA graphs (GPU only)
    baselines: tuple[str, ...] = param((), choices=BASELINES, unique=True)  # behaviour-cloning rows trained in the same stack
    extra_seeds: tuple[int, ...] = param((), low=0)  # more seeds for ...
    extra_seeds_for: tuple[str, ...] = param((), unique=True)  # ... these reward sets (the rows the paper's question rests on)

    @property
    def trained(self) -> tuple[str, ...]:
        """Every trained row: the reward sets, then the baselines."""
        return self.reward_sets + self.baselines

    def seeds_for(self, name: str) -> tuple[int, ...]:
        """The training seeds of one reward set or baseline."""
        return self.seeds + (self.extra_seeds if name in self.extra_seeds_for else ())

    def check(self) -> None:
        every = self.seeds + self.extra_seeds
        if len(set(every)) != len(every):
            raise ParamError("train.extra_seeds", list(self.extra_seeds),
                             f"seeds not already in train.seeds {list(self.seeds)}, without repeats")
        for i, name in enumerate(self.extra_seeds_for):
            if name not in self.trained:
                raise ParamError(f"train.extra_seeds_for[{i}]", name, f"one of {', '.join(self.trained)}")
        if self.cuda_graphs and self.device == "cpu":
            raise ParamError("train.cuda_graphs", True, "false on device cpu (CUDA graphs need a GPU)")


def train_config(raw: Any) -> TrainConfig:
    """``train`` holds the run list plus any :class:`IQLConfig` field, checked here once: the
    trainer takes ``.iql`` as it is (:func:`rgvlm.rl.runs.iql_config_for` only sets the grid)."""
    raw = dict(as_section(raw, "train"))
    # The clause embedding's size follows the mission encoder (an unknown encoder fails in IQLConfig).
    encoder = raw.get("mission_encoder", IQLConfig.mission_encoder)
    encoder_dim = MISSION_ENCODER_DIMS.get(encoder) if isinstance(encoder, str) else None
    if encoder_dim is not None and raw.setdefault("mission_embed_dim", encoder_dim) != encoder_dim:
        raise ParamError("train.mission_embed_dim", raw["mission_embed_dim"],
                         f"{encoder_dim}, the size of a {encoder} clause embedding "
                         "(or leave it out: it follows train.mission_encoder)")
    return TrainConfig.from_section(raw)


@dataclass(frozen=True)
class EvaluationConfig(Config):
    """Where and how often each trained run is rolled out."""

    SECTION = "evaluation"
    seed: int = param(low=0, high=999)
    ks: tuple[int, ...] = param(low=MIN_SUBTASKS, high=MAX_SUBTASKS, nonempty=True, unique=True)
    splits: tuple[str, ...] = param(choices=SPLITS, nonempty=True, unique=True)
    # Per split; one number is every split's. Always a dict once built.
    episodes_per_k: int | dict[str, int] = param(hash=False, low=1)
    bootstrap_samples: int = param(2000, low=100)
    device: str = param("cpu", test=device_name, expected=DEVICES)
    policies: dict[str, float] = param(default_factory=lambda: {"greedy": 0.0}, hash=False, nonempty=True,
                                       low=0.0)  # name -> temperature (0 = greedy)
    workers: int = param(1, low=1, high=64)  # processes that roll episodes out in parallel (the result does not depend on it)

    def check(self) -> None:
        per_k = self.episodes_per_k
        if isinstance(per_k, Mapping):
            for split in per_k:
                if split not in self.splits:
                    raise ParamError(f"evaluation.episodes_per_k.{split}", per_k[split],
                                     f"one of the keys {', '.join(self.splits)} (evaluation.splits)")
            for split in self.splits:
                if split not in per_k:
                    raise ParamError(f"evaluation.episodes_per_k.{split}", None, "an integer in 1..")
        self._normalise(episodes_per_k={s: per_k[s] if isinstance(per_k, Mapping) else per_k for s in self.splits})


def evaluation_config(raw: Any) -> EvaluationConfig:
    return EvaluationConfig.from_section(raw)


@dataclass(frozen=True)
class ReportConfig(Config):
    """What the report stage draws: the fusion of Figure 4 left, the split and the policy its claims
    are checked on. Whether they name an evaluated fusion, split and policy is checked against the
    ``rewards`` and ``evaluation`` sections where both are at hand (:mod:`rgvlm.sections`), and by
    the report stage against what was evaluated."""

    SECTION = "report"
    headline_lambda: float = param(low=0.0)  # fixed in advance, never picked on the evaluation seeds
    split: str = param("fresh", choices=SPLITS)
    policy: str | None = param(None, test=lambda name: name is None or bool(name),
                               expected="the name of an evaluation policy (or null: the first evaluated)")


def report_config(raw: Any) -> ReportConfig:
    """Check ``report``."""
    return ReportConfig.from_section(raw)


def resolve_device(device: str) -> str:
    """``auto`` means CUDA when there is a GPU, else the CPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ParamError("device", device, "auto or cpu: this machine has no CUDA GPU")
    return device


@dataclass(frozen=True)
class LabellingConfig(Config):
    """The LVLM backend every labelling method that asks an LVLM shares, and how it is queried."""

    SECTION = "labelling"
    backend: str = param("scripted", choices=BACKENDS)
    model: str | None = None
    stage2_model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = "OPENAI_API_KEY"
    max_concurrency: int = param(8, low=1)
    timeout_s: float = param(60.0, low=0.1)
    max_retries: int = param(5, low=0)
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = param(4, low=1)
    scripted: dict[str, Any] = param(default_factory=dict, hash=False)  # checked by rgvlm.vlm.scripted.ScriptedNoise
    prices: dict[str, float] = param(default_factory=dict, hash=False, low=0.0)  # USD per 1M prompt / completion tokens
    # Share of a method's queries allowed to end with no usable answer (fallback or dropped).
    max_failure_rate: float = param(0.05, low=0.0, high=1.0)
    deadline_s: float | None = param(None, low=0.1, high=86400.0)  # openai: wall-clock limit of one attempt (None: 3 x timeout_s)
    # generate: the answer's text is generated and parsed; token_probs: each score is read from the
    # distribution over its allowed tokens (rgvlm.vlm.token_probs; openai: needs the server's logprobs).
    scoring: str = param("generate", choices=SCORINGS)
    token_reduce: str = param("expectation", choices=TOKEN_REDUCES)  # token_probs: a score's expectation or argmax
    top_logprobs: int = param(20, low=1, high=20)  # openai, token_probs: alternatives asked per token

    def check(self) -> None:
        if self.backend in ("transformers", "openai") and not self.model:
            raise ParamError("labelling.model", self.model, f"a model name or path for the {self.backend} backend")
        if self.backend == "openai" and not (self.base_url or "").startswith(("http://", "https://")):
            raise ParamError("labelling.base_url", self.base_url,
                             "an http(s) URL of an OpenAI-compatible server, e.g. http://localhost:8000/v1")


def labelling_config(raw: Any) -> LabellingConfig:
    """Check ``labelling``."""
    raw = as_section(raw, "labelling")
    for key in MOVED_TO_RG_VLM:  # before the unknown-key check: say where the key went
        if key in raw:
            raise ParamError(f"labelling.{key}", raw[key], f"rg_vlm.{key} instead (RG-VLM's own section)")
    return LabellingConfig.from_section(raw)
