"""Vectorised evaluation rollouts: every episode of every run steps in lockstep, with one
batched call of the stacked policies per step.

Episodes are drawn on two splits of initial states:
- ``seen``: layouts (seeds) that appear in the offline dataset;
- ``fresh``: seeds no dataset episode used, the paper's randomised initial states.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from rgvlm.data.storage import OfflineDataset
from rgvlm.envs import encode_observation, env_id_for, make_env, reset_quietly
from rgvlm.envs.seeds import fresh_seed
from rgvlm.params import EnvConfig

#: act(grid uint8 [R,M,H,W,3], carry uint8 [R,M,2], mission float [R,M,S,E]) -> actions long [R,M]
ActFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class EvalEpisode:
    """One evaluation start state."""

    k: int
    split: str
    seed: int


def evaluation_episodes(
    dataset: OfflineDataset, ks: tuple[int, ...], splits: tuple[str, ...], episodes_per_k: int, base_seed: int
) -> list[EvalEpisode]:
    """The start states every run is evaluated on (the same for all runs)."""
    episodes = []
    for k in ks:
        if "seen" in splits:
            seen = list(dict.fromkeys(e["seed"] for e in dataset.episodes if e["k"] == k))
            if len(seen) < episodes_per_k:
                raise ValueError(
                    f"evaluation.episodes_per_k={episodes_per_k}: the dataset has only {len(seen)} layouts "
                    f"with k={k} for the 'seen' split"
                )
            episodes += [EvalEpisode(k, "seen", s) for s in seen[:episodes_per_k]]
        if "fresh" in splits:
            episodes += [EvalEpisode(k, "fresh", fresh_seed(base_seed, i)) for i in range(episodes_per_k)]
    return episodes


def rollout(
    act: ActFn,
    episodes: list[EvalEpisode],
    env_config: EnvConfig,
    embed_missions: Callable[[list[str]], np.ndarray],
    num_runs: int = 1,
    device: str | torch.device = "cpu",
) -> list[list[dict]]:
    """Roll ``num_runs`` policies out on every episode, all in lockstep, until success or
    time-out.

    ``act`` gets the observations of the active episodes of every run as ``[R, M, ...]``
    tensors (M = the most episodes any run still has running; shorter rows are padded with
    a repeat and their actions ignored) and returns actions ``[R, M]``: one batched policy
    call per step for all runs. Returns, per run, one record per episode: k, split, seed,
    mission, steps, progress (sub-tasks done), completion (progress / k) and success.
    """
    runs, count = num_runs, len(episodes)
    envs = [[make_env(env_id_for(ep.k), **env_config.kwargs()) for ep in episodes] for _ in range(runs)]
    for row in envs:
        for env, ep in zip(row, episodes, strict=True):
            env.unwrapped.agent_view_obs = False  # the policy reads encode_observation only
            reset_quietly(env, ep.seed)
    missions = [env.unwrapped.mission for env in envs[0]]  # the same start states for every run
    mission_vectors = torch.as_tensor(embed_missions(missions), device=device)
    first = [encode_observation(env) for env in envs[0]]
    grid = np.stack([np.stack([o[0] for o in first])] * runs)  # [R, E, H, W, 3], updated in place
    carry = np.stack([np.stack([o[1] for o in first])] * runs)
    steps = np.zeros((runs, count), dtype=np.int64)
    done = np.zeros((runs, count), dtype=bool)
    success = np.zeros((runs, count), dtype=bool)
    while not done.all():
        active = [np.flatnonzero(~row) for row in done]
        width = max(len(a) for a in active)
        index = np.stack([np.resize(a, width) if len(a) else np.zeros(width, dtype=np.int64) for a in active])
        rows = np.arange(runs)[:, None]
        with torch.no_grad():
            actions = act(torch.as_tensor(grid[rows, index], device=device),
                          torch.as_tensor(carry[rows, index], device=device),
                          mission_vectors[torch.as_tensor(index, device=device)]).cpu().numpy()
        for r, episode_ids in enumerate(active):
            for e, action in zip(episode_ids, actions[r, : len(episode_ids)], strict=True):
                env = envs[r][e]
                _, reward, terminated, truncated, _ = env.step(int(action))
                steps[r, e] += 1
                grid[r, e], carry[r, e] = encode_observation(env)
                if terminated or truncated:
                    done[r, e] = True
                    success[r, e] = bool(terminated and reward > 0)
    records = []
    for r in range(runs):
        run_records = []
        for e, ep in enumerate(episodes):
            progress = envs[r][e].unwrapped.instrs.progress
            run_records.append({
                "k": ep.k, "split": ep.split, "seed": ep.seed, "mission": missions[e], "steps": int(steps[r, e]),
                "progress": int(progress), "completion": progress / ep.k, "success": bool(success[r, e]),
            })
            envs[r][e].close()
        records.append(run_records)
    return records


def evaluate_runs(
    act: ActFn,
    runs: list[tuple[str, int]],
    episodes: list[EvalEpisode],
    env_config: EnvConfig,
    embed_missions: Callable[[list[str]], np.ndarray],
    device: str = "cpu",
) -> list[dict]:
    """Roll out every (reward set, seed) run on the same episodes at once; ``act`` is the
    stacked policy of ``runs`` (in that order). One record per (run, episode), with
    ``method`` and ``run_seed`` added."""
    per_run = rollout(act, episodes, env_config, embed_missions, num_runs=len(runs), device=device)
    records = []
    for (reward_set, seed), run_records in zip(runs, per_run, strict=True):
        records += [{**record, "method": reward_set, "run_seed": seed} for record in run_records]
    return records
