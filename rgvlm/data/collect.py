"""Building the offline dataset: a mixture of expert, noisy-expert and partial episodes.

- ``expert``: the suite's bot, start to success.
- ``noisy``: the bot, but each action is replaced by a uniformly random one with
  probability ``noise_epsilon``; the bot replans from wherever that leaves it. Runs until
  success or the time limit.
- ``partial``: the bot for the first j < k sub-tasks (j uniform), then uniformly random
  actions for a uniform number of steps in ``wander_steps``, then the episode is cut
  (a time-out, not a terminal state).
- ``decoy``: the bot for the first j < k sub-tasks (j uniform), then the bot competently
  doing a *wrong* version of sub-task j+1 (another door, another object or another target:
  :func:`rgvlm.envs.suite.decoy_subtask`), cut once that decoy's effect holds (a time-out).
  Unlike random steps, this mistake is systematic and costs the mission a detour, so
  behaviour cloning copies it and only a reward that credits sub-tasks tells it apart.
- ``detour``: the bot, but before every sub-task it first competently does a wrong version of
  it (a decoy, as above, where the layout has one), then the right one; runs until success or
  the time limit. The mistake is systematic and is *not* cut short: every later state is still
  the bot's, so the detour's only cost is the time it takes -- a dozen or more steps, which a
  discounted return sees (unlike a single random step, undone one step later) and which, at
  the time limit, costs sub-tasks. Where detour episodes are the majority, behaviour cloning
  takes the detour too.

The mixture makes the reward signal, not imitation, decide what IQL learns. Each episode
draws its randomness from its own generator seeded by (dataset seed, k, index), so the
dataset is byte-identical whenever it is rebuilt from the same parameters.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field

import numpy as np

from rgvlm.envs import NUM_ACTIONS, SuiteBot, encode_observation, env_id_for, make_env, reset_quietly
from rgvlm.envs.bot import DecoyBot
from rgvlm.envs.seeds import dataset_seed
from rgvlm.envs.suite import decoy_subtask
from rgvlm.params import MIXTURE_KINDS, DatasetConfig, EnvConfig


@dataclass
class EpisodeRecord:
    """One collected episode, before it is packed into the dataset's arrays."""

    env_id: str
    seed: int
    k: int
    kind: str
    mission: str
    subtasks: list[str]
    grids: list[np.ndarray] = field(default_factory=list)
    carries: list[np.ndarray] = field(default_factory=list)
    actions: list[int] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    terminals: list[bool] = field(default_factory=list)
    progress: list[int] = field(default_factory=list)
    bot_failures: int = 0
    decoy: object = None  # a decoy episode's wrong sub-task (not stored in the dataset)
    detours: list = field(default_factory=list)  # a detour episode's (progress, wrong sub-task) pairs (not stored)


def episode_kinds(config: DatasetConfig, k: int) -> list[str]:
    """The kind of every episode for ``k``: exact shares (largest remainder), shuffled."""
    n = config.episodes_per_k
    quotas = {kind: config.mixture[kind] * n for kind in MIXTURE_KINDS}
    counts = {kind: int(np.floor(q)) for kind, q in quotas.items()}
    by_remainder = sorted(MIXTURE_KINDS, key=lambda kind: (-(quotas[kind] - counts[kind]), kind))
    for kind in by_remainder[: n - sum(counts.values())]:
        counts[kind] += 1
    kinds = [kind for kind in MIXTURE_KINDS for _ in range(counts[kind])]
    rng = np.random.default_rng([config.seed, k, 2**20])
    return [kinds[i] for i in rng.permutation(n)]


class _Expert:
    """The bot plus recovery: if BabyAI's bot trips over a state noise put it in, it is
    rebuilt from the current state; if that fails too, the step is random."""

    def __init__(self, env, state_view: bool, decoy=None, failures: int = 0):
        self.env = env
        self.state_view = state_view
        self.decoy = decoy
        self.decoy_at: int | None = None  # a detour's sub-task (the mission's progress when it began)
        self.bot = self._new_bot()
        self.failures = failures

    def _new_bot(self):
        if self.decoy is None:
            return SuiteBot(self.env, self.state_view)
        return DecoyBot(self.env, self.decoy, self.state_view)

    def action(self, taken: int | None, rng: np.random.Generator) -> int:
        for _attempt in range(2):
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    action = int(self.bot.replan(taken))
                if 0 <= action < NUM_ACTIONS:
                    return action
            except Exception:  # noqa: BLE001 - BabyAI's bot signals dead ends with asserts
                pass
            self.failures += 1
            self.bot = self._new_bot()
            taken = None
        return int(rng.integers(NUM_ACTIONS))


def collect_episode(env_config: EnvConfig, config: DatasetConfig, k: int, index: int, kind: str) -> EpisodeRecord:
    """Roll out one episode of the given kind; deterministic in its arguments."""
    env_id = env_id_for(k)
    env = make_env(env_id, **env_config.kwargs())
    seed = dataset_seed(config.seed, index)
    rng = np.random.default_rng([config.seed, k, index])
    reset_quietly(env, seed)
    u = env.unwrapped
    record = EpisodeRecord(env_id=env_id, seed=seed, k=k, kind=kind, mission=u.mission, subtasks=u.subtasks)
    expert = _Expert(env, state_view=config.expert_view == "state")
    stop_expert_at = int(rng.integers(0, k)) if kind in ("partial", "decoy") else k
    wander_left = int(rng.integers(config.wander_steps[0], config.wander_steps[1] + 1))
    wandering = kind == "partial"
    detoured: set[int] = set()  # the sub-tasks (by progress) a detour episode has made its detour before
    taken: int | None = None
    while True:
        grid, carry = encode_observation(env)
        record.grids.append(grid)
        record.carries.append(carry)
        if kind == "detour":
            expert, switched = _detour_expert(env, expert, detoured, rng)
            if switched:
                taken = None
                if expert.decoy is not None:
                    record.detours.append((expert.decoy_at, expert.decoy))
        if kind == "decoy" and u.instrs.progress >= stop_expert_at and not wandering:
            if expert.decoy is None:
                decoy = decoy_subtask(env, rng)
                if decoy is None:  # no wrong version exists here: end as a partial episode
                    wandering = True
                else:
                    expert = _Expert(env, expert.state_view, decoy=decoy, failures=expert.failures)
                    record.decoy = decoy
                    taken = None
            elif u.instrs.leaf_holds(expert.decoy):
                break
        if wandering and u.instrs.progress >= stop_expert_at:
            if wander_left == 0:
                break
            wander_left -= 1
            action = int(rng.integers(NUM_ACTIONS))
        else:
            suggested = expert.action(taken, rng)
            if kind == "noisy" and rng.random() < config.noise_epsilon:
                action = int(rng.integers(NUM_ACTIONS))
            else:
                action = suggested
            taken = None if action == suggested else action
        _, reward, terminated, truncated, info = env.step(action)
        record.actions.append(action)
        record.rewards.append(float(reward))
        record.terminals.append(bool(terminated))
        record.progress.append(int(info["progress"]))
        if terminated or truncated:
            grid, carry = encode_observation(env)
            record.grids.append(grid)
            record.carries.append(carry)
            break
    record.bot_failures = expert.failures
    env.close()
    return record


def _detour_expert(env, expert: _Expert, detoured: set[int], rng: np.random.Generator) -> tuple[_Expert, bool]:
    """A detour episode's bot for this step, and whether it changed: a decoy of the current
    sub-task once per sub-task (before the right one), back to the mission once the decoy's
    effect holds (or once the mission moved on by itself)."""
    instrs = env.unwrapped.instrs
    progress = instrs.progress
    if expert.decoy is not None:
        if not instrs.leaf_holds(expert.decoy) and progress == expert.decoy_at:
            return expert, False
        return _Expert(env, expert.state_view, failures=expert.failures), True
    if progress in detoured or progress >= len(instrs.leaves):
        return expert, False
    detoured.add(progress)
    decoy = decoy_subtask(env, rng)
    if decoy is None:  # no wrong version exists here: straight to the right one
        return expert, False
    detour = _Expert(env, expert.state_view, decoy=decoy, failures=expert.failures)
    detour.decoy_at = progress
    return detour, True


def pack_episodes(records: list[EpisodeRecord]) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Concatenate episode records into the dataset's episode table and arrays."""
    episodes, step_start, obs_start = [], 0, 0
    for r in records:
        length = len(r.actions)
        episodes.append(
            {
                "env_id": r.env_id, "seed": r.seed, "k": r.k, "kind": r.kind, "mission": r.mission,
                "subtasks": r.subtasks, "length": length, "success": bool(r.terminals and r.terminals[-1]),
                "final_progress": r.progress[-1] if r.progress else 0,
                "step_start": step_start, "obs_start": obs_start,
            }
        )
        step_start += length
        obs_start += length + 1
    arrays = {
        "obs_grid": np.stack([g for r in records for g in r.grids]).astype(np.uint8),
        "obs_carry": np.stack([c for r in records for c in r.carries]).astype(np.uint8),
        "actions": np.array([a for r in records for a in r.actions], dtype=np.int8),
        "rewards": np.array([x for r in records for x in r.rewards], dtype=np.float32),
        "terminals": np.array([x for r in records for x in r.terminals], dtype=np.bool_),
        "progress": np.array([x for r in records for x in r.progress], dtype=np.int8),
    }
    return episodes, arrays


def _collect_job(job: tuple) -> EpisodeRecord:
    return collect_episode(*job)


def collect_dataset(env_config: EnvConfig, config: DatasetConfig, workers: int = 1) -> tuple[list[dict], dict[str, np.ndarray], dict]:
    """Collect every episode; ``workers`` > 1 uses processes (the result is identical)."""
    jobs = [
        (env_config, config, k, index, kind)
        for k in config.ks
        for index, kind in enumerate(episode_kinds(config, k))
    ]
    if workers > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            records = pool.map(_collect_job, jobs, chunksize=8)
    else:
        records = [_collect_job(job) for job in jobs]
    episodes, arrays = pack_episodes(records)
    stats = {"bot_failures": int(sum(r.bot_failures for r in records))}
    return episodes, arrays, stats


#: Episode kinds added after datasets had been committed: a manifest names them only when used.
LATER_KINDS = ("decoy", "detour")


def params_record(env_config: EnvConfig, config: DatasetConfig) -> dict:
    """The parameters a dataset was built from, as stored in its manifest."""
    dataset = {
        "seed": config.seed, "ks": list(config.ks), "episodes_per_k": config.episodes_per_k,
        # Kinds added later are recorded only when used, so older manifests keep their bytes.
        "mixture": {kind: share for kind, share in config.mixture.items() if kind not in LATER_KINDS or share},
        "noise_epsilon": config.noise_epsilon,
        "wander_steps": list(config.wander_steps),
    }
    # Recorded only when it is not BabyAI's own bot, so datasets built before the option
    # existed keep their manifest (and their DVC hash) byte for byte.
    if config.expert_view != "agent":
        dataset["expert_view"] = config.expert_view
    return {"env": env_config.kwargs(), "dataset": dataset}


def check_dataset_params(manifest: dict, env_config: EnvConfig, config: DatasetConfig) -> None:
    """Fail clearly when ``data/`` was built from other parameters than ``params.yaml``'s."""
    expected = params_record(env_config, config)
    for section, values in expected.items():
        built = manifest.get(section)
        if built != values:
            raise ValueError(
                f"data/ was built with {section}={built}, but params.yaml says {section}={values}: "
                "rebuild it with `make data` (python -m rgvlm.data collect), then `dvc commit data.dvc`"
            )
