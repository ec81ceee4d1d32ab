"""A peer baseline no one here wrote: d3rlpy's DiscreteBC and DiscreteCQL on the offline dataset.

d3rlpy (https://github.com/takuseno/d3rlpy, version 2.8.1) is trained on a converted copy of
the project's dataset and scored by the project's own rollouts
(:func:`rgvlm.evaluation.rollout.rollout`), so its numbers are comparable with the IQL runs.

Installation
------------
d3rlpy 2.8.1 pins ``gymnasium==1.0.0`` and needs the old ``gym`` at import time; a normal
install would downgrade the project's gymnasium (1.4.0, used by minigrid 3.2). So it is
installed without dependencies, plus only what ``import d3rlpy`` and training need
(:data:`INSTALL_COMMANDS`, :func:`install_command`). d3rlpy never touches a gymnasium
environment here (it is trained offline and evaluated through our rollouts), so its pin is moot.

The documented conversion (:func:`to_mdp_dataset`)
--------------------------------------------------
*States.* d3rlpy's default encoder is an MLP over a flat float vector, so every observation
becomes one vector, the concatenation of

1. ``EntityStateEncoder(spec).featurize(grid, carry)`` (:mod:`rgvlm.rl.networks`), the
   parameter-free part of the project's object-centric encoder, with
   ``spec = encoder_spec(IQLConfig(encoder="entities", grid_height=H, grid_width=W))``:
   for up to 16 doors/objects one-hot type, colour, state and position in the agent's frame
   (cells ahead, cells right) plus a presence mask, the one-hot cells of the 5x5 egocentric
   patch around the agent, and the agent's cell, heading and carried object. On the 11x11
   grid that is 16 * 63 + 16 + 525 + 43 = **1,592** values, all 0/1;
2. the mission: the frozen sentence embeddings of its clauses
   (:class:`rgvlm.rl.missions.MissionEmbedder`, ``[6 slots, 384]``, unused slots zero),
   flattened to **2,304** values (``mission_dim=None``, the default), or, with
   ``mission_dim=d``, each slot projected on the top ``d`` right singular vectors of the
   matrix of the dataset's distinct clause embeddings (uncentred, so empty slots stay zero;
   signs fixed so the largest entry of each vector is positive), ``6 * d`` values.

The default state is therefore 1,592 + 2,304 = **3,896** floats. The vectors can be stored as
float16 (``dtype="float16"``) to halve the memory: the state features are 0/1 and exact, the
mission embeddings round to ~1e-3 relative, and the same rounding is applied at evaluation
(d3rlpy casts every batch to float32).

*Episodes.* d3rlpy (2.x) stores an episode of T steps as T observations, T actions and T
rewards; if the episode is *terminated* all T are transitions (the last one's next state is
zero, its terminal flag 1), otherwise (a *timeout*) only the first T-1 are, the last
observation serving as the next state of the one before. Our episodes have ``length``
transitions and ``length + 1`` observations, so

* a **success** (the dataset's ``terminals`` is true on its last step, and only there)
  becomes a terminated episode of ``length`` steps: observations 0..length-1, the actions,
  the rewards; the final observation is dropped (a terminal transition never bootstraps);
* a **time-out** (an episode that ends without success, whatever cut it) becomes a timeout
  episode of ``length + 1`` steps: all ``length + 1`` observations, the actions and rewards
  followed by one padding step (action 0, reward 0) on the final observation. d3rlpy never
  samples that step (a timeout episode has one transition fewer than it has steps): it only
  carries the final observation, the next state of the last real transition, which then
  bootstraps as a time-out should.

Every dataset transition is thus exactly one d3rlpy transition, with the same state, action,
reward, next state and terminal flag. ``rewards`` replaces the sparse task reward (any reward
set of the project), ``holdout`` drops whole episodes (d3rlpy's dataset is episode based).

Training and evaluation
-----------------------
:func:`train_d3rlpy` trains one algorithm with d3rlpy's own ``fit`` (its sampler, its losses,
its optimiser), seeded with ``d3rlpy.seed`` so a run is reproducible, and writes nothing to
disk (``NoopAdapterFactory``). :class:`D3rlpyPolicies` is the rollout's ``act`` for R trained
algorithms at once: greedy (``algo.predict``) or sampled from ``softmax(scores / T)``, where
the scores are DiscreteCQL's Q values (``algo.predict_value`` for each action) and
DiscreteBC's policy logits (``algo.impl.modules.imitator(x).logits``; d3rlpy has no public
call for them).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch

from rgvlm.config import Config, param
from rgvlm.data.storage import OfflineDataset
from rgvlm.envs import NUM_ACTIONS
from rgvlm.progress import Progress
from rgvlm.rl.networks import EncoderSpec, EntityStateEncoder

D3RLPY_VERSION = "2.8.1"

#: The exact commands that install d3rlpy beside the project without touching gymnasium:
#: d3rlpy and the old gym (imported by ``import d3rlpy``) without dependencies, then what
#: d3rlpy really imports and the project does not already have. click, colorama, tqdm,
#: typing_extensions, scikit-learn, cloudpickle, h5py's numpy and torch are already there.
INSTALL_COMMANDS = (
    "python -m pip install --no-deps d3rlpy==2.8.1 gym==0.26.2",
    "python -m pip install --no-deps structlog==26.1.0 h5py==3.16.0 dataclasses-json==0.6.7 "
    "marshmallow==3.26.2 typing-inspect==0.9.0 mypy-extensions==1.2.0",
)

ALGORITHMS = ("bc", "cql")
FEATURES = ("entities",)


def install_command() -> str:
    """The shell command that installs d3rlpy into this interpreter's environment."""
    return " && ".join(c.replace("python ", f"{sys.executable} ", 1) for c in INSTALL_COMMANDS)


def require_d3rlpy(quiet: bool = True):
    """``import d3rlpy``, or an ImportError that says how to install it. ``quiet`` raises the
    level of d3rlpy's structlog console logger to warnings."""
    try:
        import d3rlpy
    except ImportError as error:
        raise ImportError(
            f"the d3rlpy peer baseline needs d3rlpy=={D3RLPY_VERSION} ({error}). Install it beside the project "
            f"without downgrading gymnasium: {install_command()}"
        ) from error
    if quiet:
        import logging

        import structlog

        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    return d3rlpy


# --------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------


def mission_basis(mission_table: np.ndarray, dim: int) -> tuple[np.ndarray, float]:
    """``[E, dim]``: the top ``dim`` right singular vectors of the distinct non-zero clause
    embeddings of ``mission_table`` ``[M, S, E]`` (uncentred), signs fixed; and the share of
    their squared norm the basis keeps."""
    if dim < 1:
        raise ValueError(f"mission_dim={dim}: expected >= 1 (or None for the full embedding)")
    table = np.asarray(mission_table, dtype=np.float64)
    rows = table.reshape(-1, table.shape[-1])
    rows = np.unique(rows[np.abs(rows).sum(axis=1) > 0], axis=0)
    if not len(rows):
        raise ValueError("the mission table has no non-zero clause embedding")
    _, singular, vt = np.linalg.svd(rows, full_matrices=False)
    basis = np.zeros((table.shape[-1], dim))
    kept = min(dim, vt.shape[0])
    basis[:, :kept] = vt[:kept].T
    signs = np.sign(basis[np.abs(basis).argmax(axis=0), np.arange(dim)])
    basis *= np.where(signs == 0, 1.0, signs)
    energy = float((singular[:kept] ** 2).sum() / (singular**2).sum())
    return basis.astype(np.float32), energy


@dataclass(frozen=True, eq=False)
class Conversion:
    """How a state (grid, carry, mission embedding) becomes d3rlpy's flat observation vector;
    see the module docstring. Used identically for the dataset and at evaluation."""

    spec: EncoderSpec
    features: str = "entities"
    basis: np.ndarray | None = None  # [E, d] per-slot mission projection; None = full embedding
    dtype: str = "float32"
    basis_energy: float = 1.0

    def __post_init__(self) -> None:
        if self.features not in FEATURES:
            raise ValueError(f"features={self.features!r}: expected one of {FEATURES}")
        if self.spec.kind != "entities":
            raise ValueError(f"spec.kind={self.spec.kind!r}: the conversion uses the 'entities' featurizer")
        if np.dtype(self.dtype) not in (np.float32, np.float16):
            raise ValueError(f"dtype={self.dtype!r}: expected 'float32' or 'float16'")

    @classmethod
    def for_dataset(cls, data: OfflineDataset, mission_table: np.ndarray, features: str = "entities",
                    mission_dim: int | None = None, dtype: str = "float32") -> Conversion:
        """The conversion of ``data``'s grids with missions embedded as ``mission_table`` [M, S, E]."""
        from rgvlm.rl.iql import IQLConfig, encoder_spec

        table = np.asarray(mission_table)
        if table.ndim != 3:
            raise ValueError(f"mission_table must be [missions, slots, embed], got shape {table.shape}")
        height, width = data.obs_grid.shape[1:3]
        spec = encoder_spec(IQLConfig(encoder="entities", grid_height=int(height), grid_width=int(width),
                                      mission_slots=int(table.shape[1]), mission_embed_dim=int(table.shape[2])))
        basis, energy = (None, 1.0) if mission_dim is None else mission_basis(table, int(mission_dim))
        return cls(spec=spec, features=features, basis=basis, dtype=str(np.dtype(dtype)), basis_energy=energy)

    @cached_property
    def _encoder(self) -> EntityStateEncoder:
        with torch.random.fork_rng(devices=[]):  # its (unused) layers must not move the caller's RNG
            return EntityStateEncoder(self.spec).eval()

    @property
    def state_dim(self) -> int:
        """Size of the featurized grid + carry part."""
        n = self.spec.max_entities
        return n * self._encoder.token_embed.in_features + n + self._encoder.patch_embed.in_features \
            + self._encoder.here_embed.in_features

    @property
    def mission_dim(self) -> int:
        """Size of the mission part."""
        per_slot = self.spec.mission_embed_dim if self.basis is None else self.basis.shape[1]
        return self.spec.mission_slots * per_slot

    @property
    def observation_dim(self) -> int:
        return self.state_dim + self.mission_dim

    @torch.no_grad()
    def state_features(self, grid, carry) -> np.ndarray:
        """float ``[B, state_dim]`` of grids ``[B, H, W, 3]`` and carries ``[B, 2]`` (arrays or tensors)."""
        grid, carry = torch.as_tensor(np.asarray(grid)), torch.as_tensor(np.asarray(carry))
        return self._encoder.featurize(grid.long(), carry.long()).numpy().astype(self.dtype)

    def mission_features(self, mission) -> np.ndarray:
        """float ``[B, mission_dim]`` of mission embeddings ``[B, S, E]``."""
        mission = np.asarray(mission, dtype=np.float32)
        if mission.shape[1:] != (self.spec.mission_slots, self.spec.mission_embed_dim):
            raise ValueError(f"missions must be [B, {self.spec.mission_slots}, {self.spec.mission_embed_dim}], "
                             f"got {mission.shape}")
        if self.basis is not None:
            mission = mission @ self.basis
        return mission.reshape(len(mission), -1).astype(self.dtype)

    def __call__(self, grid, carry, mission) -> np.ndarray:
        """d3rlpy observations ``[B, observation_dim]``."""
        return np.concatenate([self.state_features(grid, carry), self.mission_features(mission)], axis=1)

    def describe(self) -> dict[str, Any]:
        """What the conversion is, for the records."""
        return {
            "features": "EntityStateEncoder.featurize(grid, carry) ++ mission",
            "encoder_spec": dataclasses.asdict(self.spec),
            "state_dim": self.state_dim,
            "mission": ("full: flattened [slots, embed] clause embeddings" if self.basis is None else
                        f"per-slot projection on the top {self.basis.shape[1]} right singular vectors of the "
                        f"dataset's distinct clause embeddings (uncentred; keeps {self.basis_energy:.4f} of their "
                        "squared norm)"),
            "mission_dim": self.mission_dim,
            "observation_dim": self.observation_dim,
            "dtype": self.dtype,
            "episodes": "success -> terminated episode of length steps; time-out -> timeout episode of length + 1 "
                        "steps (final observation + a padding step d3rlpy never samples)",
        }


def _episode_mask(data: OfflineDataset, holdout: np.ndarray | None) -> np.ndarray:
    """bool [episodes]: kept episodes (``holdout`` marks transitions never trained on)."""
    keep = np.ones(len(data.episodes), dtype=bool)
    if holdout is None:
        return keep
    holdout = np.asarray(holdout, dtype=bool)
    if holdout.shape != (data.num_transitions,):
        raise ValueError(f"holdout has shape {holdout.shape}, the dataset has {data.num_transitions} transitions")
    for i in range(len(data.episodes)):
        part = holdout[data.episode_steps(i)]
        if part.any() != part.all():
            raise ValueError(f"holdout splits episode {i}: d3rlpy datasets hold whole episodes, mask whole episodes")
        keep[i] = not part.any()
    if not keep.any():
        raise ValueError("holdout masks every episode")
    return keep


def to_mdp_dataset(data: OfflineDataset, mission_table: np.ndarray, features: str = "entities", *,
                   rewards: np.ndarray | None = None, holdout: np.ndarray | None = None,
                   conversion: Conversion | None = None, mission_dim: int | None = None, dtype: str = "float32",
                   chunk: int = 8192):
    """``data`` as a d3rlpy ``MDPDataset`` (discrete, ``NUM_ACTIONS`` actions); see the module
    docstring for the conversion. ``mission_table`` [len(data.missions), S, E] embeds
    ``data.missions``; ``rewards`` [N] replaces ``data.rewards``; ``holdout`` (bool [N]) drops
    the episodes it marks (whole episodes only). ``conversion`` (else built from ``features``,
    ``mission_dim``, ``dtype``) must be the one the policies are evaluated with."""
    d3rlpy = require_d3rlpy()
    n = data.num_transitions
    table = np.asarray(mission_table, dtype=np.float32)
    if table.shape[0] != len(data.missions):
        raise ValueError(f"mission_table has {table.shape[0]} rows, the dataset has {len(data.missions)} missions")
    rewards = np.asarray(data.rewards if rewards is None else rewards, dtype=np.float32)
    if rewards.shape != (n,):
        raise ValueError(f"rewards has shape {rewards.shape}, the dataset has {n} transitions")
    conversion = conversion or Conversion.for_dataset(data, table, features, mission_dim, dtype)
    keep = _episode_mask(data, holdout)
    mission_of = {m: i for i, m in enumerate(data.missions)}

    rows, actions, step_rewards, terminals, timeouts, missions = [], [], [], [], [], []
    for i, episode in enumerate(data.episodes):
        if not keep[i]:
            continue
        steps, length = data.episode_steps(i), int(episode["length"])
        if length < 1:
            raise ValueError(f"episode {i} has no transition")
        ends = data.terminals[steps]
        success = bool(episode["success"])
        if ends[:-1].any() or bool(ends[-1]) != success:
            raise ValueError(f"episode {i}: terminals {np.flatnonzero(ends).tolist()} disagree with success={success}")
        size = length if success else length + 1  # a time-out keeps its final observation
        rows.append(episode["obs_start"] + np.arange(size))
        pad = size - length
        actions.append(np.concatenate([data.actions[steps].astype(np.int64), np.zeros(pad, np.int64)]))
        step_rewards.append(np.concatenate([rewards[steps], np.zeros(pad, np.float32)]))
        end = np.zeros(size, dtype=np.float32)
        end[-1] = 1.0
        terminals.append(end if success else np.zeros(size, np.float32))
        timeouts.append(np.zeros(size, np.float32) if success else end)
        missions.append(np.full(size, mission_of[episode["mission"]]))
    rows, missions = np.concatenate(rows), np.concatenate(missions)

    mission_part = conversion.mission_features(table)  # [M, mission_dim], once per mission
    observations = np.empty((len(rows), conversion.observation_dim), dtype=conversion.dtype)
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        observations[start : start + len(part), : conversion.state_dim] = conversion.state_features(
            data.obs_grid[part], data.obs_carry[part])
        observations[start : start + len(part), conversion.state_dim :] = mission_part[missions[start : start + chunk]]

    dataset = d3rlpy.dataset.MDPDataset(
        observations=observations, actions=np.concatenate(actions), rewards=np.concatenate(step_rewards),
        terminals=np.concatenate(terminals), timeouts=np.concatenate(timeouts),
        action_space=d3rlpy.ActionSpace.DISCRETE, action_size=NUM_ACTIONS)
    expected = int(sum(data.episodes[i]["length"] for i in np.flatnonzero(keep)))
    if dataset.transition_count != expected or len(dataset.episodes) != int(keep.sum()):
        raise AssertionError(f"d3rlpy built {len(dataset.episodes)} episodes / {dataset.transition_count} "
                             f"transitions from {int(keep.sum())} / {expected}")
    return dataset


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@dataclass
class TrainedRun:
    """One trained d3rlpy algorithm with its settings, losses and timing."""

    algo: Any
    settings: dict[str, Any]
    losses: list[dict[str, float]]
    train_seconds: float

    @property
    def updates_per_second(self) -> float:
        return self.settings["n_steps"] / self.train_seconds if self.train_seconds > 0 else float("nan")


def _num_parameters(algo) -> int:
    modules = algo.impl.modules
    return sum(p.numel() for f in dataclasses.fields(modules) if not f.name.startswith("targ_")
               for value in [getattr(modules, f.name)] if isinstance(value, torch.nn.Module)
               for p in value.parameters())


def make_config(algo: str, batch_size: int = 64, hidden_units: Sequence[int] = (128, 128),
                learning_rate: float = 1e-3, gamma: float = 0.97, alpha: float = 1.0,
                target_update_interval: int = 200, n_critics: int = 1, bc_beta: float = 0.5):
    """The d3rlpy config of ``algo`` ("bc" or "cql"): d3rlpy's defaults except the listed
    arguments. The defaults match the project's CPU training (params.yaml ``train``: batch 64,
    lr 1e-3, gamma 0.97, 128 x 2 hidden units); DiscreteCQL's target network is copied every
    ``target_update_interval`` updates (d3rlpy's default 8,000 would never copy in a 2,000-update
    run; 200 is the time constant of the project's Polyak rate 0.005)."""
    d3rlpy = require_d3rlpy()
    if algo not in ALGORITHMS:
        raise ValueError(f"algo={algo!r}: expected one of {ALGORITHMS}")
    encoder = d3rlpy.models.VectorEncoderFactory(hidden_units=[int(h) for h in hidden_units])
    optim = d3rlpy.optimizers.AdamFactory()
    if algo == "bc":
        return d3rlpy.algos.DiscreteBCConfig(batch_size=batch_size, learning_rate=learning_rate, optim_factory=optim,
                                             encoder_factory=encoder, beta=bc_beta)
    return d3rlpy.algos.DiscreteCQLConfig(
        batch_size=batch_size, learning_rate=learning_rate, gamma=gamma, optim_factory=optim, encoder_factory=encoder,
        q_func_factory=d3rlpy.models.MeanQFunctionFactory(), n_critics=n_critics,
        target_update_interval=target_update_interval, alpha=alpha)


def architecture(algo: str, observation_dim: int, hidden_units: Sequence[int]) -> str:
    """Words for the networks and losses d3rlpy builds (d3rlpy 2.8.1)."""
    mlp = " -> ".join(str(h) for h in [observation_dim, *hidden_units])
    if algo == "bc":
        return (f"DiscreteBC: CategoricalPolicy = VectorEncoder MLP {mlp} (ReLU) -> Linear({hidden_units[-1]}, "
                f"{NUM_ACTIONS}) logits; loss NLL(a | s) + beta * mean(logits^2); Adam")
    return (f"DiscreteCQL: Q = VectorEncoder MLP {mlp} (ReLU) -> Linear({hidden_units[-1]}, {NUM_ACTIONS}) per "
            "critic (MeanQFunction); loss Huber TD to the Double-DQN target (hard target copy every "
            "target_update_interval updates) + alpha * (logsumexp_a Q(s, a) - Q(s, a_data)); Adam")


def train_d3rlpy(algo: str, dataset, seed: int, n_steps: int, batch_size: int = 64,
                 hidden_units: Sequence[int] = (128, 128), learning_rate: float = 1e-3, *, gamma: float = 0.97,
                 alpha: float = 1.0, target_update_interval: int = 200, n_critics: int = 1, bc_beta: float = 0.5,
                 log_every: int | None = None, device: str = "cpu:0", experiment_name: str | None = None) -> TrainedRun:
    """Train d3rlpy's DiscreteBC (``algo="bc"``) or DiscreteCQL (``"cql"``) on ``dataset`` (from
    :func:`to_mdp_dataset`) for ``n_steps`` updates with d3rlpy's own ``fit``.

    ``d3rlpy.seed(seed)`` (Python, NumPy and torch global generators: the weights and d3rlpy's
    batch sampler) is set right before ``fit`` builds the networks, so the same arguments give
    the same run. Losses are averaged per ``log_every`` updates (default: the whole run).
    Nothing is written to disk."""
    d3rlpy = require_d3rlpy()
    if n_steps < 1:
        raise ValueError(f"n_steps={n_steps}: expected >= 1")
    log_every = int(log_every or n_steps)
    if n_steps % log_every:
        raise ValueError(f"n_steps={n_steps} is not a multiple of log_every={log_every} (d3rlpy trains whole epochs)")
    config = make_config(algo, batch_size, hidden_units, learning_rate, gamma, alpha, target_update_interval,
                         n_critics, bc_beta)
    learner = config.create(device=device)
    d3rlpy.seed(int(seed))
    started = time.perf_counter()
    # d3rlpy's own tqdm bar (show_progress) would write into the notebook; rgvlm.progress writes to
    # the terminal, from fit's per-update callback.
    with Progress(f"d3rlpy {type(learner).__name__} seed {seed}", n_steps, "updates") as bar:
        history = learner.fit(
            dataset, n_steps=n_steps, n_steps_per_epoch=log_every, experiment_name=experiment_name or f"{algo}_{seed}",
            with_timestamp=False, show_progress=False, save_interval=n_steps // log_every + 1,
            logger_adapter=d3rlpy.logging.NoopAdapterFactory(), callback=lambda _, __, step: bar.set(step))
    seconds = time.perf_counter() - started
    observation_dim = int(dataset.episodes[0].observation_signature.shape[0][0])
    settings = {
        "library": f"d3rlpy {d3rlpy.__version__}",
        "algorithm": type(learner).__name__,
        "seed": int(seed),
        "n_steps": int(n_steps),
        "log_every": log_every,
        "device": device,
        "batch_size": int(batch_size),
        "hidden_units": [int(h) for h in hidden_units],
        "learning_rate": float(learning_rate),
        "optimizer": "Adam (d3rlpy AdamFactory defaults: betas 0.9/0.999, eps 1e-8, no weight decay)",
        "observation_dim": observation_dim,
        "action_size": NUM_ACTIONS,
        "num_parameters": _num_parameters(learner),
        "architecture": architecture(algo, observation_dim, hidden_units),
        "config": config.serialize_to_dict(),
    }
    if algo == "bc":
        settings["bc_beta"] = float(bc_beta)
    else:
        settings.update(gamma=float(gamma), alpha=float(alpha), target_update_interval=int(target_update_interval),
                        n_critics=int(n_critics))
    losses = [{"step": epoch * log_every, **{k: float(v) for k, v in metrics.items()}} for epoch, metrics in history]
    return TrainedRun(algo=learner, settings=settings, losses=losses, train_seconds=seconds)


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def action_scores(algo, observations: np.ndarray) -> torch.Tensor:
    """float ``[B, NUM_ACTIONS]``: DiscreteCQL's (any d3rlpy Q-learner's) Q values through the
    public ``predict_value``, or DiscreteBC's policy logits (``algo.impl.modules.imitator``)."""
    modules = algo.impl.modules
    if hasattr(modules, "imitator"):
        from d3rlpy.torch_utility import convert_to_torch

        x = convert_to_torch(np.asarray(observations), algo.impl.device)
        if algo.config.observation_scaler is not None:
            x = algo.config.observation_scaler.transform(x)
        with torch.no_grad():
            return modules.imitator(x).logits.float().cpu()
    if hasattr(modules, "q_funcs"):
        batch = len(observations)
        values = [algo.predict_value(observations, np.full(batch, a, dtype=np.int64)) for a in range(NUM_ACTIONS)]
        return torch.as_tensor(np.stack(values, axis=1), dtype=torch.float32)
    raise TypeError(f"{type(algo).__name__}: no Q values or logits to sample from")


class D3rlpyPolicies:
    """The rollout's ``act`` (:data:`rgvlm.evaluation.rollout.ActFn`) for R trained d3rlpy
    algorithms: observations ``[R, M, ...]`` -> actions ``[R, M]``, run r acting with
    ``algos[r]`` (d3rlpy objects or :class:`TrainedRun`).

    ``spec`` is the :class:`Conversion` the algorithms were trained on, or an
    :class:`~rgvlm.rl.networks.EncoderSpec` for the default conversion (full mission
    embedding, float32). ``temperature`` 0 acts greedily (``algo.predict``); above 0 it samples
    from ``softmax(scores / temperature)`` (:func:`action_scores`) with its own generator
    seeded by ``seed``, so a sampled rollout is reproducible."""

    def __init__(self, algos: Sequence[Any], spec: Conversion | EncoderSpec, temperature: float = 0.0,
                 seed: int = 0) -> None:
        if not temperature >= 0.0:
            raise ValueError(f"temperature={temperature!r}: expected a number >= 0 (0 = greedy)")
        if not algos:
            raise ValueError("D3rlpyPolicies needs at least one trained algorithm")
        self.algos = [getattr(a, "algo", a) for a in algos]
        self.conversion = spec if isinstance(spec, Conversion) else Conversion(spec=spec)
        self.temperature = float(temperature)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.num_runs = len(self.algos)

    @torch.no_grad()
    def __call__(self, grid: torch.Tensor, carry: torch.Tensor, mission: torch.Tensor) -> torch.Tensor:
        runs, width = grid.shape[:2]
        if runs != self.num_runs:
            raise ValueError(f"got observations of {runs} runs, the policies have {self.num_runs}")
        x = self.conversion(grid.reshape(runs * width, *grid.shape[2:]).cpu(),
                            carry.reshape(runs * width, -1).cpu(),
                            mission.reshape(runs * width, *mission.shape[2:]).cpu()).reshape(runs, width, -1)
        actions = torch.empty((runs, width), dtype=torch.long)
        for r, algo in enumerate(self.algos):
            if self.temperature == 0.0:
                actions[r] = torch.as_tensor(algo.predict(x[r])).long()
            else:
                probs = torch.softmax(action_scores(algo, x[r]) / self.temperature, dim=-1)
                actions[r] = torch.multinomial(probs, 1, generator=self.generator)[:, 0]
        return actions.to(grid.device)


SAMPLING = {
    "bc": "softmax(logits / T) of DiscreteBC's CategoricalPolicy (algo.impl.modules.imitator(x).logits)",
    "cql": "softmax(Q / T), Q(s, a) from algo.predict_value for each of the 6 actions",
}


def train_and_evaluate(dataset, conversion: Conversion, algos: Sequence[str], seeds: Sequence[int], n_steps: int,
                       hyper: dict[str, Any], episodes: list, env_config, embed_missions,
                       policies: dict[str, float], eval_seed: int = 0) -> tuple[list[dict], list[dict], dict, dict]:
    """Train every (algorithm, seed) on ``dataset`` and roll each algorithm's runs out in lockstep
    with the project's :func:`~rgvlm.evaluation.rollout` under every policy (name -> temperature).

    Returns (episode records with ``reward_set`` = ``d3rlpy_<algo>`` (the row the evaluation
    tables give the peer), ``run_seed`` and ``policy``; one record per run with its training time and
    losses; the settings of each algorithm; wall
    times)."""
    from rgvlm.evaluation import rollout

    records, runs, settings, seconds = [], [], {}, {}
    for algo in algos:
        row = f"d3rlpy_{algo}"
        trained = [train_d3rlpy(algo, dataset, seed, n_steps, **hyper) for seed in seeds]
        for seed, run in zip(seeds, trained, strict=True):
            runs.append({"reward_set": row, "run_seed": seed, "train_seconds": round(run.train_seconds, 2),
                         "updates_per_second": round(run.updates_per_second, 2), "losses": run.losses})
            print(f"{row} seed {seed}: {n_steps} updates in {run.train_seconds:.1f}s "
                  f"({run.updates_per_second:.1f}/s), final {run.losses[-1]}", flush=True)
        settings[row] = {k: v for k, v in trained[0].settings.items() if k != "seed"}
        settings[row]["sampling"] = SAMPLING[algo]
        seconds[f"train_{row}"] = round(sum(r.train_seconds for r in trained), 2)
        for policy, temperature in policies.items():
            started = time.perf_counter()
            act = D3rlpyPolicies(trained, conversion, temperature=temperature, seed=eval_seed)
            with Progress(f"{row} rollouts ({policy})", len(trained) * len(episodes), "episodes") as bar:
                per_run = rollout(act, episodes, env_config, embed_missions, num_runs=len(trained),
                                  on_finished=bar.update)
            for seed, run_records in zip(seeds, per_run, strict=True):
                records += [{**r, "reward_set": row, "run_seed": seed, "policy": policy} for r in run_records]
            seconds[f"eval_{row}_{policy}"] = round(time.perf_counter() - started, 2)
    return records, runs, settings, seconds


@dataclass(frozen=True)
class PeerConfig(Config):
    """The ``peer`` section of ``params.yaml``: which d3rlpy baselines, and their settings."""

    SECTION = "peer"
    algos: tuple[str, ...] = param(choices=ALGORITHMS, nonempty=True, unique=True)
    seeds: tuple[int, ...] = param(low=0, nonempty=True)
    num_steps: int = param(low=1)
    batch_size: int = param(64, low=1)
    hidden_units: tuple[int, ...] = param((128, 128), low=1, nonempty=True)  # layer widths
    lr: float = param(1e-3, low=1e-8)
    gamma: float = param(0.97, low=0.0, high=0.9999)
    alpha: float = param(1.0, low=0.0)
    target_update_interval: int = param(200, low=1)
    reward_set: str = "sparse"
    threads: int = param(1, low=1, high=64)  # torch threads while training (d3rlpy's small batches run best on one)

    def hyperparameters(self) -> dict[str, Any]:
        """Keyword arguments of :func:`train_d3rlpy`."""
        return dict(batch_size=self.batch_size, hidden_units=self.hidden_units, learning_rate=self.lr,
                    gamma=self.gamma, alpha=self.alpha, target_update_interval=self.target_update_interval)


def peer_config(raw: Any) -> PeerConfig:
    """Check the ``peer`` section (a bad value fails naming the key, before any work)."""
    return PeerConfig.from_section(raw)


def time_updates(algo: str, dataset, steps: int, warmup: int = 10, batch_size: int = 64,
                 hidden_units: Sequence[int] = (128, 128), learning_rate: float = 1e-3, seed: int = 0) -> dict:
    """Training speed of one freshly built d3rlpy algorithm: ``warmup`` untimed, then ``steps``
    timed (``dataset.sample_transition_batch`` + ``algo.update``) steps, d3rlpy's own loop pieces."""
    d3rlpy = require_d3rlpy()
    config = make_config(algo, batch_size=batch_size, hidden_units=hidden_units, learning_rate=learning_rate)
    learner = config.create(device="cpu:0")
    d3rlpy.seed(seed)
    learner.build_with_dataset(dataset)
    for _ in range(warmup):
        learner.update(dataset.sample_transition_batch(batch_size))
    sample_s = update_s = 0.0
    for _ in range(steps):
        started = time.perf_counter()
        batch = dataset.sample_transition_batch(batch_size)
        sampled = time.perf_counter()
        learner.update(batch)
        sample_s += sampled - started
        update_s += time.perf_counter() - sampled
    return {
        "algorithm": type(learner).__name__,
        "updates_per_s": round(steps / (sample_s + update_s), 2),
        "updates_per_s_excluding_sampling": round(steps / update_s, 2),
        "ms_per_update": round(1000 * (sample_s + update_s) / steps, 3),
        "ms_sampling_per_update": round(1000 * sample_s / steps, 3),
        "architecture": architecture(algo, dataset.episodes[0].observation_signature.shape[0][0], hidden_units),
        "config": config.serialize_to_dict(),
    }
