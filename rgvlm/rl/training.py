"""The training-and-evaluation recipe, written once: reward sets and seeds -> a trained stack -> evaluation records.

Every caller that trains IQL or behaviour-cloning runs -- the pipeline's ``train`` stage
(:func:`rgvlm.rl.runs.train_runs`, which adds resume, fingerprints, checkpoints and exports
around it), the experiments and the training benchmarks -- builds its stack here:

1. each reward set is scaled as the learner sees it (:func:`scale_rewards`, ``config.reward_scale``);
2. the dataset goes to the device once, with one reward row per reward set and one policy-weight
   row per behaviour-cloning baseline (:class:`~rgvlm.rl.multirun.DeviceTransitions`, with the
   config's n-step targets, its mission view and the critic diagnostic's held-out episodes);
3. every (reward set, seed) run becomes one run of a :class:`~rgvlm.rl.multirun.MultiRunIQL`
   stack reading its reward row (a baseline's critic trains on its own entry of the reward sets,
   and its policy imitates the dataset weighted by its row);
4. a :class:`~rgvlm.rl.diagnostics.CriticProbe` where episodes are held out.

:meth:`Stack.train` runs the updates and logs them (one row per run per ``log_every`` updates,
the critic diagnostic joined at every ``checkpoint_every`` step and at the last);
:func:`rgvlm.evaluation.stack.evaluate_stack` rolls every run out at once (kept apart, so that the
``train`` stage does not depend on the evaluation code) and tags each record with its
``reward_set``, ``run_seed`` and ``policy``.

    stack = TrainingJob(dataset, {"sparse": r}, {"sparse": [0, 1]}, config).build()
    stack.train(config.num_steps)
    records = evaluate_stack(stack, episodes, env_config, {"greedy": 0.0, "sampled": 1.0})
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from rgvlm.config import replace_checked
from rgvlm.data.storage import OfflineDataset
from rgvlm.progress import Progress
from rgvlm.rl.diagnostics import CriticProbe, discounted_returns, holdout_mask
from rgvlm.rl.iql import REWARD_SCALES, IQLConfig
from rgvlm.rl.multirun import DeviceTransitions, MultiRunIQL, StackedPolicy


def iql_config_for(dataset: OfflineDataset, hyperparameters: IQLConfig | Mapping) -> IQLConfig:
    """The IQL config with the grid shape taken from the dataset itself.

    ``hyperparameters`` is the checked ``train_config(...).iql`` (only the grid and the rules
    between fields are checked again: the rest was checked once, with the ``train`` section) or
    a mapping of IQLConfig fields (checked here)."""
    height, width = dataset.obs_grid.shape[1:3]
    grid = {"grid_height": int(height), "grid_width": int(width)}
    if isinstance(hyperparameters, IQLConfig):
        return replace_checked(hyperparameters, **grid)
    return IQLConfig(**{**hyperparameters, **grid})


def learner_missions(dataset: OfflineDataset, config: IQLConfig) -> tuple[torch.Tensor, np.ndarray | None]:
    """The mission table the runs read (``config.mission_encoder``) and, with ``config.mission_view``
    ``remaining``, each observation's row of it (see :func:`rgvlm.rl.missions.observation_missions`;
    None: every transition reads its episode's mission, ``dataset.mission_of_step``)."""
    from rgvlm.rl.missions import mission_embedder, observation_missions

    strings, rows = observation_missions(dataset, config.mission_view)
    return torch.as_tensor(mission_embedder(config.mission_encoder, device="cpu").embed(strings)), rows


def scale_rewards(dataset: OfflineDataset, rewards: np.ndarray, mode: str, gamma: float) -> np.ndarray:
    """A reward set as the learner sees it. ``"return_range"`` divides it by the range (max - min)
    of its discounted returns-to-go over the dataset, the targets the critic fits: the IQL
    paper's return normalisation, taken over what a discounted critic sees. Every reward set
    then has critic targets in a range of width 1 (a 0/1 sparse reward is unchanged), so one
    ``beta`` means the same for all of them, and a dense reward whose returns reach several
    units does not turn the critic's errors into several-times larger advantages, which
    ``exp(beta * A)`` turns into a few spiking weights. A constant reward set is left as is."""
    rewards = np.asarray(rewards, dtype=np.float32)
    if mode not in REWARD_SCALES:
        raise ValueError(f"reward scale {mode!r}: expected one of {', '.join(REWARD_SCALES)}")
    if mode == "none":
        return rewards
    returns = discounted_returns(dataset, rewards, gamma)
    width = float(returns.max() - returns.min()) if returns.size else 0.0
    return rewards if width <= 0.0 else (rewards / width).astype(np.float32)


BASELINE_DESCRIPTIONS = {
    "bc": "behaviour cloning on every dataset action (no reward), same networks and stack as IQL",
    "bc_success": "filtered behaviour cloning: actions of successful episodes only, same networks and stack",
}


def baseline_weights(dataset: OfflineDataset, name: str) -> np.ndarray:
    """Per-transition policy weights of a behaviour-cloning baseline (``rgvlm.params.BASELINES``):
    ``bc`` imitates every action, ``bc_success`` only those of successful episodes."""
    if name == "bc":
        return np.ones(dataset.num_transitions, dtype=np.float32)
    if name == "bc_success":
        success = np.array([float(e["success"]) for e in dataset.episodes], dtype=np.float32)
        return success[dataset.episode_of_step]
    raise ValueError(f"baseline {name!r}: expected bc or bc_success")


@dataclass
class TrainingJob:
    """What a stack is trained from.

    ``reward_sets``: name -> the raw per-transition rewards (scaled here); ``seeds``: one list for
    every reward set or a list per reward set (a set missing from the mapping trains no run: its
    row is still on the device, e.g. for a baseline's critic). ``baselines``: name -> per-transition
    policy weights of a behaviour-cloning baseline (:func:`baseline_weights`); a baseline's
    entry in ``reward_sets`` is what its (unused) critic trains on. ``runs`` (optional) fixes the
    order of the (reward set, seed) runs; by default every set's seeds, in the order of
    ``reward_sets``. ``config`` is the checked IQL config (``iql_config_for``).

    ``mission_table`` / ``observation_missions``: what :func:`learner_missions` returns (computed
    when not given). ``holdout``: transitions never trained on (default: the critic diagnostic's,
    ``config.holdout_fraction``); the critic probe runs on them. ``probe=False`` builds none.
    ``compile``, ``cuda_graphs``, ``chunk_size``: the trainer's (:class:`MultiRunIQL`)."""

    dataset: OfflineDataset
    reward_sets: Mapping[str, np.ndarray]
    seeds: Sequence[int] | Mapping[str, Sequence[int]]
    config: IQLConfig
    device: str | torch.device = "cpu"
    baselines: Mapping[str, np.ndarray] = field(default_factory=dict)
    runs: Sequence[tuple[str, int]] | None = None
    compile: bool = False
    cuda_graphs: bool = False
    chunk_size: int | None = None
    mission_table: torch.Tensor | None = None
    observation_missions: np.ndarray | None = None
    holdout: np.ndarray | None = None
    probe: bool = True

    def run_list(self) -> list[tuple[str, int]]:
        """The stack's (reward set, seed) runs, in stack order; checked against the reward sets."""
        if self.runs is not None:
            runs = [(str(name), int(seed)) for name, seed in self.runs]
        else:
            per_set = self.seeds if isinstance(self.seeds, Mapping) else {name: self.seeds for name in self.reward_sets}
            runs = [(name, int(seed)) for name in self.reward_sets for seed in per_set.get(name, ())]
        for name, _ in runs:
            if name not in self.reward_sets:
                raise ValueError(f"run of reward set {name!r}: not among the reward sets {list(self.reward_sets)}")
        for name in self.baselines:
            if name not in self.reward_sets:
                raise ValueError(f"baseline {name!r} has no entry in the reward sets (what its critic trains on)")
        if not runs:
            raise ValueError("a training job needs at least one (reward set, seed) run")
        if len(set(runs)) != len(runs):
            raise ValueError(f"runs {runs}: a (reward set, seed) run appears twice")
        return runs

    def _rows(self, runs: list[tuple[str, int]]) -> tuple[list[str], list[str]]:
        """The reward sets on the device, in the order the runs first name them (only those the
        runs read), and the baselines among them (row b + 1 of ``bc_weights``; row 0 is all ones)."""
        names = list(dict.fromkeys(name for name, _ in runs))
        return names, [name for name in names if name in self.baselines]

    def _holdout(self) -> np.ndarray:
        return holdout_mask(self.dataset, self.config.holdout_fraction) if self.holdout is None else self.holdout

    def _scaled(self, names: list[str]) -> list[np.ndarray]:
        config = self.config
        return [scale_rewards(self.dataset, self.reward_sets[name], config.reward_scale, config.gamma) for name in names]

    def transitions(self) -> DeviceTransitions:
        """The dataset on the device as this job's stack reads it; several jobs that differ only in
        the networks or the trainer's flags can share it (``build(data)``)."""
        names, baselines = self._rows(self.run_list())
        return self._transitions(names, baselines, self._scaled(names), self._holdout())

    def _transitions(self, names, baselines, rewards, holdout) -> DeviceTransitions:
        config = self.config
        if self.mission_table is None:
            table, rows = learner_missions(self.dataset, config)
        else:
            table, rows = self.mission_table, self.observation_missions
        return DeviceTransitions(self.dataset, rewards, table, self.device,
                                 bc_weights=[self.baselines[name] for name in baselines], holdout=holdout,
                                 n_step=config.n_step, gamma=config.gamma, observation_missions=rows)

    def build(self, data: DeviceTransitions | None = None) -> Stack:
        """The stack, ready to train: rewards scaled, the dataset on the device (or ``data``, what
        :meth:`transitions` of an equivalent job returned), the runs' networks initialised."""
        config = self.config
        runs = self.run_list()
        names, baselines = self._rows(runs)
        holdout = self._holdout()
        rewards = self._scaled(names) if data is None or self.probe else None
        if data is None:
            data = self._transitions(names, baselines, rewards, holdout)
        elif data.rewards.shape[0] != len(names) or data.bc_weights.shape[0] != len(baselines) + 1:
            raise ValueError(f"the shared data has {data.rewards.shape[0]} reward and {data.bc_weights.shape[0] - 1} "
                             f"baseline rows; this job's runs read {len(names)} and {len(baselines)}")
        trainer = MultiRunIQL(config, [seed for _, seed in runs], [names.index(name) for name, _ in runs],
                              device=self.device, compile=self.compile, cuda_graphs=self.cuda_graphs,
                              chunk_size=self.chunk_size,
                              bc_rows=[baselines.index(name) + 1 if name in self.baselines else None
                                       for name, _ in runs])
        probe = CriticProbe(self.dataset, data, rewards, holdout, config.gamma) if self.probe and holdout.any() else None
        return Stack(runs, config, self.dataset, data, trainer, probe, self.device)


class Stack:
    """A built :class:`TrainingJob`: its ``runs`` (reward set, seed), the ``data`` on the device,
    the ``trainer`` (the :class:`MultiRunIQL`) and the critic ``probe`` (None without held-out
    episodes). Run r of the trainer is ``runs[r]``."""

    def __init__(self, runs: list[tuple[str, int]], config: IQLConfig, dataset: OfflineDataset,
                 data: DeviceTransitions, trainer: MultiRunIQL, probe: CriticProbe | None,
                 device: str | torch.device) -> None:
        self.runs, self.config, self.dataset = runs, config, dataset
        self.data, self.trainer, self.probe, self.device = data, trainer, probe, device

    @property
    def step(self) -> int:
        return self.trainer.step

    def train(self, until_step: int, on_log: Callable[[list[dict]], None] | None = None,
              on_step: Callable[[int], bool | None] | None = None, progress: bool = True) -> list[dict]:
        """Update the stack until ``until_step``; returns the log rows written on the way.

        A row per run (``reward_set``, ``seed``, ``step``, the update's metrics,
        ``updates_per_s`` of the stack and ``run_updates_per_s``) at every ``config.log_every``
        step and at the last; the critic diagnostic's values join them at every
        ``config.checkpoint_every`` step and at the last. ``on_log`` hears each step's rows.
        ``on_step(step)`` is called after every update and its rows (a checkpoint, a time limit);
        a true return stops training there."""
        config, trainer = self.config, self.trainer
        log: list[dict] = []
        tick, tick_step = time.perf_counter(), trainer.step
        # Updates/s and ETA in the terminal (rgvlm.progress; a resumed stack counts from its step).
        bar = (Progress(f"IQL updates, {len(self.runs)} runs in one stack", until_step, "updates",
                        initial=trainer.step) if progress else contextlib.nullcontext())
        with bar:
            while trainer.step < until_step:
                metrics = trainer.train_step(self.data)
                step = trainer.step
                if (config.log_every and step % config.log_every == 0) or step == until_step:
                    probing = self.probe is not None and (
                        step == until_step or (config.checkpoint_every and step % config.checkpoint_every == 0))
                    if probing:
                        metrics = {**metrics, **self.probe(trainer)}
                    values = torch.stack(list(metrics.values())).cpu()  # one host sync per log step
                    now = time.perf_counter()
                    rate = (step - tick_step) / max(now - tick, 1e-9)  # stack updates per second
                    rows = [{"reward_set": name, "seed": seed, "step": step,
                             **{k: float(values[i, r]) for i, k in enumerate(metrics)},
                             "updates_per_s": rate, "run_updates_per_s": rate * len(self.runs)}
                            for r, (name, seed) in enumerate(self.runs)]
                    log += rows
                    if on_log is not None:
                        on_log(rows)
                    tick, tick_step = time.perf_counter(), step
                stop = on_step is not None and on_step(step)
                if progress:
                    bar.set(step)
                if stop:
                    break
        return log

    def run_state(self, r: int) -> dict:
        """Run r's state in the :class:`~rgvlm.rl.iql.IQLLearner` format (what the train stage exports)."""
        return self.trainer.run_state(r)

    def policy(self, temperature: float = 0.0, seed: int = 0) -> StackedPolicy:
        """Every run's current policy, stacked for one batched call: greedy, or sampled at
        ``temperature`` > 0 from a generator seeded by ``seed``."""
        return StackedPolicy(self.config, [self.trainer.run_state(r)["policy"] for r in range(len(self.runs))],
                             device=self.device, temperature=temperature, seed=seed)

    def critic_diagnostics(self) -> list[dict[str, float]]:
        """The critic diagnostic (:data:`rgvlm.rl.diagnostics.DIAGNOSTIC_NAMES`) of every run now, in
        run order; an empty dict per run without held-out episodes."""
        if self.probe is None:
            return [{} for _ in self.runs]
        values = {k: v.tolist() for k, v in self.probe(self.trainer).items()}
        return [{k: v[r] for k, v in values.items()} for r in range(len(self.runs))]
