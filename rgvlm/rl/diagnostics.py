"""Has a run's critic learned anything? Measured on held-out episodes, for every run of a stack.

Completion numbers say whether a policy works; they do not say *why not*. Two diagnostics,
logged during training and shown in the report for every run, answer the first question
to ask of an IQL run:

* ``v_return_corr``: the Pearson correlation between V(s) and the Monte-Carlo discounted
  return of the run's own reward set, on the transitions of episodes held out from training
  (``holdout_mask``). A critic that learned nothing scores about 0; one that ranks states by
  how much reward follows them scores near 1. (V is an upper expectile of in-data returns,
  not the behaviour policy's mean return, so 1 is not expected; a trend over training is.)
  Returns of time-out episodes are truncated where the data ends.
* ``v_return_corr_success``: the same correlation on the held-out episodes that succeeded.
  On them the data's return is close to the best return, which is what an upper expectile
  estimates, so this is the cleaner test of fit: a critic that fits scores near 1 here even
  where failed noisy episodes (return 0 while V is high) hold ``v_return_corr`` down.
* the spread of the advantage weights ``min(exp(beta * A), clip)`` on the same transitions:
  ``adv_weight_gt2`` (the share of weights above 2), ``adv_weight_p90`` (their 90th
  percentile) and ``adv_weight_p10`` (their 10th). If every weight is about 1, IQL's policy step
  is behaviour cloning whatever the reward. The low tail matters where the data's mistakes are
  systematic: at a branch point (where a detour and the right path part) a critic that ranks
  actions gives the wrong branch a weight well below 1, while the 90th percentile can stay near 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.func import functional_call, vmap

from rgvlm.data.storage import OfflineDataset
from rgvlm.rl.iql import _gather_actions, advantage_weights, advantages
from rgvlm.rl.multirun import DeviceTransitions, MultiRunIQL

DIAGNOSTIC_NAMES = ("v_return_corr", "v_return_corr_success", "adv_weight_gt2", "adv_weight_p90", "adv_weight_p10")


def holdout_mask(dataset: OfflineDataset, fraction: float, seed: int = 0) -> np.ndarray:
    """Bool ``[N]``: the transitions of a ``fraction`` of episodes (drawn per k, so every task
    length is represented), never sampled for training. ``fraction`` 0 holds nothing out."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout fraction={fraction!r}: expected a number in [0, 1)")
    held = np.zeros(len(dataset.episodes), dtype=bool)
    if fraction > 0.0:
        ks = np.array([e["k"] for e in dataset.episodes])
        rng = np.random.default_rng([seed, 0x401D])
        for k in np.unique(ks):
            ids = np.flatnonzero(ks == k)
            count = max(1, int(round(fraction * len(ids)))) if len(ids) > 1 else 0
            held[rng.choice(ids, size=count, replace=False)] = True
    return held[dataset.episode_of_step]


def discounted_returns(dataset: OfflineDataset, rewards: np.ndarray, gamma: float) -> np.ndarray:
    """Monte-Carlo ``G_t = r_t + gamma * (1 - done_t) * G_{t+1}`` of every transition, per episode."""
    returns = np.zeros(dataset.num_transitions, dtype=np.float64)
    for episode in dataset.episodes:
        start, length = episode["step_start"], episode["length"]
        following = 0.0
        for t in range(start + length - 1, start - 1, -1):
            following = float(rewards[t]) + gamma * (0.0 if dataset.terminals[t] else following)
            returns[t] = following
    return returns.astype(np.float32)


class CriticProbe:
    """Computes :data:`DIAGNOSTIC_NAMES` for every run of a :class:`MultiRunIQL` stack.

    ``reward_sets`` are the reward rows the stack's runs train on (as in the
    :class:`DeviceTransitions`); at most ``max_transitions`` held-out transitions, evenly
    spaced, are used, so a probe costs a few forward passes.
    """

    def __init__(self, dataset: OfflineDataset, data: DeviceTransitions, reward_sets: Sequence[np.ndarray],
                 holdout: np.ndarray, gamma: float, max_transitions: int = 2048) -> None:
        held = np.flatnonzero(holdout)
        if held.size == 0:
            raise ValueError("the critic probe needs held-out transitions (train.holdout_fraction > 0)")
        held = held[np.linspace(0, held.size - 1, min(max_transitions, held.size)).astype(np.int64)]
        device = data.action.device
        index = torch.as_tensor(held, device=device)
        obs = data.obs_index[index]
        self.grid, self.carry = data.obs_grid[obs], data.obs_carry[obs]
        self.mission = data.mission_table[data.mission_index[index]]
        self.action = data.action[index]
        # For the TD advantage (IQLConfig.advantage "td"): the transitions' (n-step) continuations.
        next_obs = data.next_obs_index[index]
        self.next_grid, self.next_carry = data.obs_grid[next_obs], data.obs_carry[next_obs]
        self.td_reward, self.done = data.rewards[:, index], data.done[index]  # [K, M], [M]
        self.discount = data.discount[index] if data.discount is not None else None
        self.returns = torch.as_tensor(np.stack([discounted_returns(dataset, r, gamma)[held] for r in reward_sets]),
                                       device=device)  # [K, M]
        succeeded = np.array([bool(e["success"]) for e in dataset.episodes])[dataset.episode_of_step[held]]
        self.succeeded = torch.as_tensor(succeeded, device=device)  # [M]

    def _evaluate(self, trainer: MultiRunIQL, net: torch.nn.Module, params, grid: torch.Tensor,
                  carry: torch.Tensor) -> torch.Tensor:
        """``net`` (the stack's value or critic module) with every run's ``params`` at the held-out
        states ``(grid, carry)``: ``[R, M, ...]``."""
        if trainer.config.shared_encoder:  # every run reads its own policy encoder's features
            runs = trainer.num_runs
            obs = trainer.featurize(grid[None], carry[None])[0]  # parameter-free: once for all runs
            mission = self.mission.expand(runs, *self.mission.shape)
            x = trainer.critic_view(obs.expand(runs, *obs.shape), mission)
            return vmap(lambda p, x, m: functional_call(net, p, (x, None, m)))(params, x, mission)
        s = (grid, carry, self.mission)  # the same states for every run
        return vmap(lambda p: functional_call(net, p, s))(params)

    @torch.no_grad()
    def __call__(self, trainer: MultiRunIQL) -> dict[str, torch.Tensor]:
        """Each diagnostic as an ``[R]`` tensor."""
        cfg = trainer.config
        v = self._evaluate(trainer, trainer._value, trainer.value, self.grid, self.carry)  # [R, M]
        q = self._evaluate(trainer, trainer._critic, trainer.target_critic, self.grid, self.carry)  # [R, M, 2, A]
        q_sa = vmap(lambda x: _gather_actions(x, self.action).min(dim=1).values)(q)
        if cfg.advantage == "td":  # the weights the policy step uses
            next_v = self._evaluate(trainer, trainer._value, trainer.value, self.next_grid, self.next_carry)
            discount = cfg.gamma if self.discount is None else self.discount
            adv = advantages("td", q_sa, v, self.td_reward[trainer.reward_rows], self.done, next_v, discount)
        else:
            adv = q_sa - v
        weights = vmap(lambda a: advantage_weights(a, cfg.beta, cfg.adv_clip, cfg.adv_normalise))(adv)
        g = self.returns[trainer.reward_rows]  # [R, M]
        return {
            "v_return_corr": _row_corr(v, g),
            # NaN when no held-out episode succeeded: there is nothing to measure the fit on.
            "v_return_corr_success": (_row_corr(v[:, self.succeeded], g[:, self.succeeded])
                                      if int(self.succeeded.sum()) > 1 else torch.full_like(v[:, 0], float("nan"))),
            "adv_weight_gt2": (weights > 2.0).float().mean(1),
            "adv_weight_p90": weights.quantile(0.9, dim=1),
            "adv_weight_p10": weights.quantile(0.1, dim=1),
        }


def _row_corr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each row of ``x`` with the same row of ``y`` (``[R, M]`` -> ``[R]``)."""
    xc, yc = x - x.mean(1, keepdim=True), y - y.mean(1, keepdim=True)
    return (xc * yc).sum(1) / (xc.square().sum(1).sqrt() * yc.square().sum(1).sqrt()).clamp(min=1e-12)
