"""Vectorised evaluation rollouts: every episode of a run steps in lockstep, one batched
policy call per step.

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

#: act(grid uint8 [B,H,W,3], carry uint8 [B,2], mission float [B,S,E]) -> actions long [B]
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
    device: str | torch.device = "cpu",
) -> list[dict]:
    """Run ``act`` on every episode until success or time-out.

    Returns one record per episode: k, split, seed, mission, steps, progress (sub-tasks
    done), completion (progress / k) and success.
    """
    envs = [make_env(env_id_for(ep.k), **env_config.kwargs()) for ep in episodes]
    for env, ep in zip(envs, episodes, strict=True):
        reset_quietly(env, ep.seed)
    missions = [env.unwrapped.mission for env in envs]
    mission_vectors = torch.as_tensor(embed_missions(missions), device=device)
    steps = np.zeros(len(envs), dtype=np.int64)
    done = np.zeros(len(envs), dtype=bool)
    success = np.zeros(len(envs), dtype=bool)
    while not done.all():
        active = np.flatnonzero(~done)
        observations = [encode_observation(envs[i]) for i in active]
        grid = torch.as_tensor(np.stack([o[0] for o in observations]), device=device)
        carry = torch.as_tensor(np.stack([o[1] for o in observations]), device=device)
        with torch.no_grad():
            actions = act(grid, carry, mission_vectors[torch.as_tensor(active, device=device)]).cpu().numpy()
        for i, action in zip(active, actions, strict=True):
            _, reward, terminated, truncated, _ = envs[i].step(int(action))
            steps[i] += 1
            if terminated or truncated:
                done[i] = True
                success[i] = bool(terminated and reward > 0)
    records = []
    for i, (env, ep) in enumerate(zip(envs, episodes, strict=True)):
        progress = env.unwrapped.instrs.progress
        records.append(
            {
                "k": ep.k, "split": ep.split, "seed": ep.seed, "mission": missions[i], "steps": int(steps[i]),
                "progress": int(progress), "completion": progress / ep.k, "success": bool(success[i]),
            }
        )
        env.close()
    return records


def evaluate_runs(
    load_act: Callable[[str, int], ActFn],
    runs: list[tuple[str, int]],
    episodes: list[EvalEpisode],
    env_config: EnvConfig,
    embed_missions: Callable[[list[str]], np.ndarray],
    device: str = "cpu",
    on_run: Callable[[str, int, list[dict]], None] | None = None,
) -> list[dict]:
    """Roll out every (reward set, seed) run on the same episodes; one record per episode
    with ``method`` and ``run_seed`` added."""
    records = []
    for reward_set, seed in runs:
        run_records = rollout(load_act(reward_set, seed), episodes, env_config, embed_missions, device)
        for record in run_records:
            record.update(method=reward_set, run_seed=seed)
        if on_run is not None:
            on_run(reward_set, seed, run_records)
        records += run_records
    return records
