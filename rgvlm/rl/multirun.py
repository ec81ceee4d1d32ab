"""Many IQL runs trained at once: stacked parameters, one vmapped update, data on the device.

Every (reward set, seed) run of the pipeline has the same networks and hyper-parameters;
only its initial weights (its seed), its batches and its rewards differ. So R runs are one
set of *stacked* parameters (a leading run dimension, ``torch.func.stack_module_state``),
and one update is

1. the value step: ``vmap(grad(value objective))`` over the runs, then one fused Adam step
   on the stacked value parameters;
2. the policy and critic steps, with the *updated* V (as in the reference implementation and
   :meth:`rgvlm.rl.iql.IQLLearner.update`): ``vmap(grad(...))``, two fused Adam steps;
3. the Polyak average of the stacked target critic.

The per-run objectives call the same pure loss functions as the eager learner, and Adam is
element-wise, so run r of the stack follows the same trajectory as an eager
:class:`~rgvlm.rl.iql.IQLLearner` with seed r given the same batches (``tests/test_multirun.py``
checks this). The eager learner stays as the cross-check and as the baseline of
``benchmarks/iql_throughput.py``.

Batches come from a counter-based sampler: the indices of run r at step t are a hash of
(r's seed, t), so a run's batch stream does not depend on which other runs share the stack,
needs no generator state in checkpoints, and can be captured in a CUDA graph. Runs with the
same seed but different reward sets see the same initial weights and the same batches
(common random numbers): their differences come from the rewards alone.

``compile=True`` wraps both gradient functions in ``torch.compile``; ``cuda_graphs=True``
compiles them with ``mode="reduce-overhead"``, which captures CUDA graphs on a GPU. Both are
opt-in; the eager path is the default and the reference.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from rgvlm.data.storage import OfflineDataset
from rgvlm.rl.iql import (
    LOOP_FIELDS,
    IQLConfig,
    IQLLearner,
    TransitionBatch,
    _gather_actions,
    advantage_weights,
    advantages,
    config_record,
    critic_loss,
    encoder_spec,
    precision_context,
    save_state_atomic,
    value_loss,
    weighted_log_likelihood,
)

METRIC_NAMES = ("value_loss", "critic_loss", "policy_loss", "q_mean", "v_mean", "adv_mean")

# splitmix64 constants, written as signed int64 (torch has no uint64 arithmetic).
_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15
_MIX1 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_MIX2 = -7723592293110705685  # 0x94D049BB133111EB
_SAMPLING_STREAM = 0x5EED5EED  # keeps the batch stream apart from the weight initialisation


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (``>>`` is arithmetic on signed tensors)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """The splitmix64 finaliser on int64 tensors (wrapping multiplication), element-wise."""
    z = x + _GOLDEN
    z = (z ^ _shift_right(z, 30)) * _MIX1
    z = (z ^ _shift_right(z, 27)) * _MIX2
    return z ^ _shift_right(z, 31)


def sample_indices(seeds: torch.Tensor, step: torch.Tensor, batch_size: int, n: int) -> torch.Tensor:
    """Indices ``[R, batch_size]`` in ``[0, n)`` for each run's seed at update ``step``.

    A pure function of (seed, step, position): the same on every device and independent of
    the other runs. The modulo bias is below n / 2**63, nothing for datasets of any size.
    """
    counter = step.to(torch.int64) * batch_size + torch.arange(batch_size, device=seeds.device)
    keys = splitmix64(seeds.to(torch.int64) * 0x100000001 + _SAMPLING_STREAM)
    mixed = splitmix64(keys[:, None] ^ counter[None, :])
    return (mixed & 0x7FFFFFFFFFFFFFFF) % n


def n_step_layout(dataset: OfflineDataset, n_step: int) -> np.ndarray:
    """The last transition of every transition's ``n_step`` window, int64 [N]: ``t + n_step - 1``,
    cut at the end of t's episode (a success is always an episode's last transition, so a window
    never reaches past a terminal state)."""
    if isinstance(n_step, bool) or not isinstance(n_step, int) or n_step < 1:
        raise ValueError(f"n_step = {n_step!r} is invalid: must be an int >= 1")
    last = np.array([e["step_start"] + e["length"] - 1 for e in dataset.episodes], dtype=np.int64)
    return np.minimum(np.arange(dataset.num_transitions, dtype=np.int64) + n_step - 1, last[dataset.episode_of_step])


def n_step_rewards(rewards: np.ndarray, end: np.ndarray, gamma: float) -> np.ndarray:
    """``sum_{i=t}^{end[t]} gamma**(i-t) * rewards[i]`` of every transition t, float32 [N]."""
    rewards = np.asarray(rewards, dtype=np.float64)
    start = np.arange(rewards.shape[0])
    total = np.zeros_like(rewards)
    for offset in range(int((end - start).max(initial=0)) + 1):
        inside = start + offset <= end
        total[inside] += gamma ** offset * rewards[start[inside] + offset]
    return total.astype(np.float32)


class DeviceTransitions:
    """The offline dataset resident on the device, with one reward row per reward set.

    Observations are stored once (``[num_obs, H, W, 3]``) and indexed per transition, so the
    dataset costs about one grid per step, whatever the number of runs.

    ``bc_weights`` are extra per-transition policy-weight rows for behaviour-cloning baselines
    (row 0 is always all ones: plain BC); ``holdout`` (bool ``[N]``) marks transitions that are
    never sampled for training (the critic diagnostic's held-out episodes).

    ``n_step`` > 1 (with its ``gamma``) makes every transition an n-step one: its reward is the
    discounted sum of the episode's next ``n_step`` rewards (fewer at the episode's end), its
    next state the one after them, and its ``discount`` ``gamma ** m`` for the m steps summed.
    """

    def __init__(self, dataset: OfflineDataset, rewards: Sequence[np.ndarray], mission_table: torch.Tensor,
                 device: str | torch.device, bc_weights: Sequence[np.ndarray] = (),
                 holdout: np.ndarray | None = None, n_step: int = 1, gamma: float | None = None,
                 observation_missions: np.ndarray | None = None) -> None:
        n = dataset.num_transitions
        for what, rows in (("reward", rewards), ("bc weight", bc_weights)):
            for i, r in enumerate(rows):
                if np.shape(r) != (n,):
                    raise ValueError(f"{what} row {i} has shape {np.shape(r)}, the dataset has {n} transitions")
        holdout = np.zeros(n, dtype=bool) if holdout is None else np.asarray(holdout, dtype=bool)
        if holdout.shape != (n,) or holdout.all():
            raise ValueError(f"holdout must be a bool mask of the {n} transitions that leaves some for training")
        if n_step != 1 and (gamma is None or not 0.0 <= gamma < 1.0):
            raise ValueError(f"n_step = {n_step} needs the learner's gamma in [0, 1), got gamma = {gamma!r}")
        on = lambda array: torch.as_tensor(np.ascontiguousarray(array), device=device)  # noqa: E731
        self.num_transitions = n
        self.n_step, self.gamma = n_step, gamma
        end = n_step_layout(dataset, n_step)  # the identity for n_step = 1
        self.obs_grid = on(dataset.obs_grid)
        self.obs_carry = on(dataset.obs_carry)
        self.obs_index = on(dataset.obs_index)
        self.next_obs_index = on(dataset.next_obs_index[end])
        # The row of mission_table each transition's state reads: its episode's (one mission for s and
        # s'), or, given ``observation_missions`` (one row per observation, e.g. the remaining
        # mission of rgvlm.rl.missions.observation_missions), the one of its state and of its next state.
        if observation_missions is None:
            self.mission_index = on(dataset.mission_of_step)
            self.next_mission_index = None
        else:
            rows = np.asarray(observation_missions, dtype=np.int64)
            if rows.shape != (dataset.obs_grid.shape[0],) or rows.min() < 0 or rows.max() >= len(mission_table):
                raise ValueError(f"observation_missions must give each of the {dataset.obs_grid.shape[0]} observations "
                                 f"a row of the {len(mission_table)}-row mission table")
            self.mission_index = on(rows[dataset.obs_index])
            self.next_mission_index = on(rows[dataset.next_obs_index[end]])
        self.mission_table = mission_table.to(device=device, dtype=torch.float32)
        self.action = on(dataset.actions.astype(np.int64))
        # Time-outs are not terminal: only success ends an episode for bootstrapping.
        self.done = on(dataset.terminals[end].astype(np.float32))
        if n_step == 1:
            self.discount = None  # the learner's gamma
            rows = [np.asarray(r, dtype=np.float32) for r in rewards]
        else:
            steps = end - np.arange(n) + 1
            self.discount = on((gamma ** steps.astype(np.float64)).astype(np.float32))
            rows = [n_step_rewards(r, end, gamma) for r in rewards]
        self.rewards = on(np.stack(rows))  # [K, N]
        self.bc_weights = on(np.stack([np.ones(n, dtype=np.float32)]
                                      + [np.asarray(w, dtype=np.float32) for w in bc_weights]))
        self.train_index = on(np.flatnonzero(~holdout))  # what the sampler draws from
        self.num_train = int(self.train_index.shape[0])

    def batch(self, indices: torch.Tensor, reward_rows: torch.Tensor) -> TransitionBatch:
        """Training transitions ``indices`` [R, B] (positions in ``train_index``) with run r's
        rewards from row ``reward_rows[r]``."""
        indices = self.train_index[indices]
        obs, next_obs = self.obs_index[indices], self.next_obs_index[indices]
        return TransitionBatch(
            grid=self.obs_grid[obs],
            carry=self.obs_carry[obs],
            mission=self.mission_table[self.mission_index[indices]],
            next_mission=None if self.next_mission_index is None else self.mission_table[self.next_mission_index[indices]],
            action=self.action[indices],
            reward=self.rewards[reward_rows[:, None], indices],
            next_grid=self.obs_grid[next_obs],
            next_carry=self.obs_carry[next_obs],
            done=self.done[indices],
            discount=None if self.discount is None else self.discount[indices],
        )

    def bc_weight(self, indices: torch.Tensor, weight_rows: torch.Tensor) -> torch.Tensor:
        """Behaviour-cloning weights ``[R, B]`` of training transitions ``indices`` (as in :meth:`batch`)."""
        return self.bc_weights[weight_rows[:, None], self.train_index[indices]]


def _stack(modules: Sequence[torch.nn.Module], device: torch.device) -> dict[str, torch.Tensor]:
    """Stacked parameters (leaves on ``device``), in ``named_parameters`` order."""
    params, _ = stack_module_state(list(modules))  # buffers are constants shared by all runs
    return {name: p.detach().to(device).requires_grad_(True) for name, p in params.items()}


class MultiRunIQL:
    """R independent IQL runs (one per entry of ``seeds``) with stacked parameters.

    ``update(batch)`` takes a batch whose tensors have a leading run dimension ``[R, B, ...]``
    and returns each metric as an ``[R]`` tensor (no host sync). ``reward_rows[r]`` says
    which reward row of a :class:`DeviceTransitions` run r trains on (see :meth:`sample`).

    ``bc_rows[r]`` (None = IQL) turns run r into a behaviour-cloning baseline trained in the
    same stack: its policy maximises the likelihood of dataset actions weighted by row
    ``bc_rows[r]`` of :attr:`DeviceTransitions.bc_weights` (0 = all ones: BC on all data; a
    success indicator: filtered BC), normalised by the batch's mean weight, instead of by
    ``exp(beta * A)``. Its critic still trains on its reward row (unused by its policy).
    """

    def __init__(self, config: IQLConfig, seeds: Sequence[int], reward_rows: Sequence[int] | None = None,
                 device: torch.device | str = "cpu", compile: bool = False, cuda_graphs: bool = False,
                 chunk_size: int | None = None, bc_rows: Sequence[int | None] | None = None) -> None:
        if not seeds:
            raise ValueError("MultiRunIQL needs at least one run (seeds is empty)")
        self.config = config
        self.device = torch.device(device)
        self.seeds = [int(s) for s in seeds]
        self.num_runs = len(self.seeds)
        rows = list(reward_rows) if reward_rows is not None else [0] * self.num_runs
        if len(rows) != self.num_runs:
            raise ValueError(f"reward_rows has {len(rows)} entries for {self.num_runs} runs")
        self.compile, self.cuda_graphs = bool(compile), bool(cuda_graphs)
        if self.cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"cuda_graphs=True needs a CUDA device, the trainer is on {self.device}")

        # Each run starts exactly where an eager learner with its seed would.
        learners = [IQLLearner(config, device="cpu", seed=s) for s in self.seeds]
        template = learners[0]
        self._critic = template.critic.to(self.device)
        self._value = template.value.to(self.device)
        self._policy = template.policy.to(self.device)
        self.critic = _stack([ln.critic for ln in learners], self.device)
        self.value = _stack([ln.value for ln in learners], self.device)
        self.policy = _stack([ln.policy for ln in learners], self.device)
        self.target_critic = {k: v.detach().clone().requires_grad_(False) for k, v in self.critic.items()}

        fused = True if self.device.type in ("cpu", "cuda") else None
        # capturable keeps Adam's step counters on the device, which CUDA-graph capture needs.
        capturable = self.device.type == "cuda"
        make = lambda group: torch.optim.Adam(list(group.values()), lr=config.lr, fused=fused,  # noqa: E731
                                              capturable=capturable)
        self.critic_optim, self.value_optim, self.policy_optim = make(self.critic), make(self.value), make(self.policy)

        self.seed_tensor = torch.tensor(self.seeds, dtype=torch.int64, device=self.device)
        self.reward_rows = torch.tensor(rows, dtype=torch.int64, device=self.device)
        bc = list(bc_rows) if bc_rows is not None else [None] * self.num_runs
        if len(bc) != self.num_runs:
            raise ValueError(f"bc_rows has {len(bc)} entries for {self.num_runs} runs")
        self.bc_rows = [None if row is None else int(row) for row in bc]
        self.is_bc = torch.tensor([row is not None for row in bc], dtype=torch.float32, device=self.device)
        self.bc_row_tensor = torch.tensor([row or 0 for row in bc], dtype=torch.int64, device=self.device)
        self.step = 0

        # chunk_size: runs per vmapped slice. On a CPU, all runs at once makes activations that
        # overflow the caches; a few at a time keeps them warm (benchmarks/iql_throughput.py).
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size={chunk_size}: expected None (all runs at once) or an int >= 1")
        self.chunk_size = chunk_size
        # With a shared encoder, the critic and value read the policy encoder's features (detached).
        self._encode = vmap(lambda p, obs, mission: functional_call(self._policy.encoder, p, (obs, None, mission)),
                            chunk_size=chunk_size)
        value_grad = vmap(grad_and_value(self._value_objective, has_aux=True), chunk_size=chunk_size)
        actor_critic_grad = vmap(grad_and_value(self._actor_critic_objective, argnums=(0, 1), has_aux=True),
                                 chunk_size=chunk_size)
        if self.compile or self.cuda_graphs:
            mode = "reduce-overhead" if self.cuda_graphs else "default"
            value_grad = torch.compile(value_grad, mode=mode, dynamic=False)
            actor_critic_grad = torch.compile(actor_critic_grad, mode=mode, dynamic=False)
        self._value_grad, self._actor_critic_grad = value_grad, actor_critic_grad

    # ------------------------------------------------------------ per-run objectives

    def _value_objective(self, value_p, target_p, x, mission, action):
        s = (x, None, mission)  # what the critic and value read (see critic_view)
        target_q_sa = _gather_actions(functional_call(self._critic, target_p, s), action).min(dim=1).values
        v = functional_call(self._value, value_p, s)
        loss = value_loss(v, target_q_sa, self.config.tau)
        return loss, (target_q_sa.detach(), v.detach().mean())

    def _actor_critic_objective(self, policy_p, critic_p, value_p, target_q_sa, obs, x, next_x, mission, next_mission, action,
                                reward, done, discount, is_bc, bc_weight):
        cfg = self.config
        # V(s) and V(s') from the updated value net in one forward pass; value_p is not differentiated.
        both = functional_call(self._value, value_p, (torch.cat([x, next_x]), None, torch.cat([mission, next_mission])))
        v_s, next_v = both.detach().chunk(2)
        adv = advantages(cfg.advantage, target_q_sa, v_s, reward, done, next_v, discount)
        weights = torch.where(is_bc > 0, bc_weight / bc_weight.mean().clamp(min=1e-6),
                              advantage_weights(adv, cfg.beta, cfg.adv_clip, cfg.adv_normalise))
        pi_loss = weighted_log_likelihood(functional_call(self._policy, policy_p, (obs, None, mission)), action, weights)
        q_sa = _gather_actions(functional_call(self._critic, critic_p, (x, None, mission)), action)
        q_loss = critic_loss(q_sa[:, 0], q_sa[:, 1], reward, done, next_v, discount)
        # The two losses depend on disjoint parameters, so one sum gives each its own gradient.
        return pi_loss + q_loss, (pi_loss.detach(), q_loss.detach(), q_sa.detach().mean(), adv.mean())

    # ------------------------------------------------------------ training

    def featurize(self, grid: torch.Tensor, carry: torch.Tensor) -> torch.Tensor:
        """Featurized states ``[R, B, F]`` of grids ``[R, B, H, W, 3]`` and carries ``[R, B, 2]``."""
        runs, batch = grid.shape[:2]
        flat = self._policy.encoder.featurize(grid.flatten(end_dim=1), carry.flatten(end_dim=1))
        return flat.reshape(runs, batch, -1)

    @torch.no_grad()
    def critic_view(self, obs: torch.Tensor, mission: torch.Tensor) -> torch.Tensor:
        """What every run's critic and value read for featurized states ``obs`` ``[R, B, F]`` with
        missions ``[R, B, S, E]``: ``obs`` itself, or, with ``shared_encoder``, the policy encoder's
        features ``[R, B, state_feature_dim]``, detached (the critic's losses do not train it)."""
        if not self.config.shared_encoder:
            return obs
        encoder = {name.removeprefix("encoder."): p.detach() for name, p in self.policy.items()
                   if name.startswith("encoder.")}
        return self._encode(encoder, obs, mission)

    def _indices(self, data: DeviceTransitions) -> torch.Tensor:
        step = torch.tensor(self.step, dtype=torch.int64, device=self.device)
        return sample_indices(self.seed_tensor, step, self.config.batch_size, data.num_train)

    def sample(self, data: DeviceTransitions) -> TransitionBatch:
        """This step's batch of every run: ``[R, batch_size, ...]``."""
        return data.batch(self._indices(data), self.reward_rows)

    def train_step(self, data: DeviceTransitions) -> dict[str, torch.Tensor]:
        """Sample this step's batches (with the BC weights of baseline runs) and update every run."""
        if data.n_step != self.config.n_step or (data.n_step != 1 and data.gamma != self.config.gamma):
            raise ValueError(f"the transitions are {data.n_step}-step with gamma {data.gamma}; the learner's config "
                             f"expects n_step {self.config.n_step}, gamma {self.config.gamma}")
        indices = self._indices(data)
        bc_weight = data.bc_weight(indices, self.bc_row_tensor) if self.bc_rows.count(None) < self.num_runs else None
        return self.update(data.batch(indices, self.reward_rows), bc_weight)

    @staticmethod
    def _apply(optim: torch.optim.Optimizer, params: dict[str, torch.Tensor], grads: Mapping[str, torch.Tensor]):
        for name, p in params.items():
            p.grad = grads[name]
        optim.step()
        for p in params.values():
            p.grad = None

    def update(self, batch: TransitionBatch, bc_weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One IQL update of every run; ``batch`` tensors are ``[R, B, ...]``, ``bc_weight`` ``[R, B]``
        (the BC baselines' policy weights; None when no run is one). Returns ``[R]`` metrics."""
        with precision_context(self.config.precision, self.device):
            return self._update(batch, bc_weight)

    def _update(self, batch: TransitionBatch, bc_weight: torch.Tensor | None) -> dict[str, torch.Tensor]:
        b = batch
        if bc_weight is None:
            bc_weight = torch.ones_like(b.reward)
        discount = torch.full_like(b.reward, self.config.gamma) if b.discount is None else b.discount
        # The parameter-free part of every encoder, once per batch instead of once per network.
        obs, next_obs = self.featurize(b.grid, b.carry), self.featurize(b.next_grid, b.next_carry)
        next_mission = b.mission if b.next_mission is None else b.next_mission
        x, next_x = self.critic_view(obs, b.mission), self.critic_view(next_obs, next_mission)
        v_grads, (v_loss, (target_q_sa, v_mean)) = self._value_grad(
            self.value, self.target_critic, x, b.mission, b.action)
        self._apply(self.value_optim, self.value, v_grads)

        value_now = {k: v.detach() for k, v in self.value.items()}
        (pi_grads, q_grads), (_, (pi_loss, q_loss, q_mean, adv_mean)) = self._actor_critic_grad(
            self.policy, self.critic, value_now, target_q_sa, obs, x, next_x, b.mission, next_mission, b.action, b.reward,
            b.done, discount, self.is_bc, bc_weight)
        self._apply(self.policy_optim, self.policy, pi_grads)
        self._apply(self.critic_optim, self.critic, q_grads)

        with torch.no_grad():
            torch._foreach_lerp_(list(self.target_critic.values()), [p.detach() for p in self.critic.values()],
                                 self.config.polyak)
        self.step += 1
        metrics = (v_loss, q_loss, pi_loss, q_mean, v_mean, adv_mean)
        # float() is a no-op in fp32; under bf16 autocast some metrics come out in bf16.
        return {name: value.detach().float().clone() for name, value in zip(METRIC_NAMES, metrics, strict=True)}

    # ------------------------------------------------------------ state

    def state_dict(self, copy: bool = True) -> dict[str, Any]:
        """Everything needed to resume every run exactly, and nothing else: the stacked parameters,
        the target critic, Adam's moments and step counts, ``step`` (all the sampler needs) and
        the run layout. No buffers (the encoders' parameter-free tables are rebuilt from the
        config), no per-run copies, every tensor contiguous and float32 (see :func:`tensor_bytes`).

        ``copy=False`` returns the live parameter tensors instead of clones (the optimizer state
        is never copied): for an immediate ``torch.save``, which then needs no second copy of the
        stack in memory."""
        def detached(group: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {k: v.detach().clone() if copy else v.detach() for k, v in group.items()}

        return {
            "config": config_record(self.config),
            "seeds": list(self.seeds),
            "reward_rows": self.reward_rows.tolist(),
            "bc_rows": list(self.bc_rows),
            "step": self.step,
            "critic": detached(self.critic),
            "target_critic": detached(self.target_critic),
            "value": detached(self.value),
            "policy": detached(self.policy),
            "critic_optim": self.critic_optim.state_dict(),
            "value_optim": self.value_optim.state_dict(),
            "policy_optim": self.policy_optim.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        theirs = (list(state["seeds"]), list(state["reward_rows"]), list(state.get("bc_rows", [None] * self.num_runs)))
        ours = (self.seeds, self.reward_rows.tolist(), self.bc_rows)
        if theirs != ours:
            raise ValueError(f"checkpoint holds runs (seeds, reward rows, BC rows) {theirs}, this trainer {ours}")
        ours, theirs = config_record(self.config), state["config"]
        diff = {k: (theirs.get(k), ours.get(k)) for k in ours.keys() | theirs.keys()
                if k not in LOOP_FIELDS and theirs.get(k) != ours.get(k)}
        if diff:
            raise ValueError(f"checkpoint config differs from the trainer's: {{field: (ckpt, ours)}} = {diff}")
        with torch.no_grad():
            for name in ("critic", "target_critic", "value", "policy"):
                for key, tensor in getattr(self, name).items():
                    tensor.copy_(state[name][key])
        self.critic_optim.load_state_dict(state["critic_optim"])
        self.value_optim.load_state_dict(state["value_optim"])
        self.policy_optim.load_state_dict(state["policy_optim"])
        self.step = int(state["step"])

    def run_state(self, r: int) -> dict[str, Any]:
        """Run r alone, in the format of :meth:`IQLLearner.state_dict` (what evaluation loads)."""
        def unstack(group: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {k: v[r].detach().cpu().clone() for k, v in group.items()}

        def optim_state(optim: torch.optim.Optimizer) -> dict[str, Any]:
            full = optim.state_dict()
            per_param = {i: {k: (v[r].cpu().clone() if torch.is_tensor(v) and v.dim() > 0 else
                                 torch.as_tensor(v).cpu().clone().reshape(()))
                             for k, v in st.items()} for i, st in full["state"].items()}
            groups = [{**g, "capturable": False} for g in full["param_groups"]]  # a CPU learner may load it
            return {"state": per_param, "param_groups": groups}

        generator = torch.Generator().manual_seed(self.seeds[r])
        return {
            "config": config_record(self.config),
            "seed": self.seeds[r],
            "step": self.step,
            "critic": unstack(self.critic),
            "target_critic": unstack(self.target_critic),
            "value": unstack(self.value),
            "policy": unstack(self.policy),
            "critic_optim": optim_state(self.critic_optim),
            "value_optim": optim_state(self.value_optim),
            "policy_optim": optim_state(self.policy_optim),
            "generator_device": "cpu",
            "generator_state": generator.get_state(),
        }

    def learner(self, r: int, device: torch.device | str = "cpu") -> IQLLearner:
        """Run r as an eager :class:`IQLLearner` (for acting, or for cross-checking)."""
        learner = IQLLearner(self.config, device=device, seed=self.seeds[r])
        learner.load_state_dict(self.run_state(r))
        return learner


def tensor_bytes(state: Any) -> int:
    """Bytes of the tensors in a (nested) state: what a checkpoint of it cannot be smaller than."""
    if torch.is_tensor(state):
        return state.numel() * state.element_size()
    if isinstance(state, Mapping):
        return sum(tensor_bytes(value) for value in state.values())
    if isinstance(state, (list, tuple)):
        return sum(tensor_bytes(value) for value in state)
    return 0


def save_multirun(trainer: MultiRunIQL, path, extra: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Atomic checkpoint of the whole stack (plus ``extra``, e.g. the runs' fingerprint and log),
    written from the live tensors (no copy). Returns what it cost: ``bytes`` (the file's size),
    ``tensor_bytes`` (the state's tensors, the floor of ``bytes``) and ``write_s`` (seconds)."""
    start = time.perf_counter()
    state = {**trainer.state_dict(copy=False), "extra": dict(extra or {})}
    save_state_atomic(state, path)
    seconds = time.perf_counter() - start
    return {"bytes": os.path.getsize(path), "tensor_bytes": tensor_bytes(state), "write_s": seconds}


class StackedPolicy:
    """The policies of several trained runs, evaluated in one vmapped call.

    ``policy_states`` are the ``policy`` entries of the runs' :meth:`IQLLearner.state_dict`;
    calling the object maps observations ``[R, M, ...]`` to actions ``[R, M]`` (the
    :data:`rgvlm.evaluation.rollout.ActFn` contract). ``temperature`` 0 acts greedily (argmax);
    above 0 it samples from ``softmax(logits / temperature)`` with its own generator seeded by
    ``seed``, so a sampled rollout is reproducible. ``config.precision`` "bf16" computes the
    logits under bfloat16 autocast (as the run was trained).
    """

    def __init__(self, config: IQLConfig, policy_states: Sequence[Mapping[str, torch.Tensor]],
                 device: torch.device | str = "cpu", temperature: float = 0.0, seed: int = 0) -> None:
        if not temperature >= 0.0:
            raise ValueError(f"temperature={temperature!r}: expected a number >= 0 (0 = greedy)")
        self.config = config  # its mission_encoder says how to embed the missions it is given
        self.temperature = float(temperature)
        self.generator = torch.Generator(device=device).manual_seed(int(seed))
        from rgvlm.rl.networks import DiscretePolicy

        self.device = torch.device(device)
        self.num_runs = len(policy_states)
        self._policy = DiscretePolicy(config.num_actions, config.hidden_dim, config.num_layers,
                                      encoder_spec(config)).to(self.device)
        self.params = {name: torch.stack([state[name] for state in policy_states]).to(self.device)
                       for name, _ in self._policy.named_parameters()}
        self._logits = vmap(lambda p, g, c, m: functional_call(self._policy, p, (g, c, m)))

    @torch.no_grad()
    def __call__(self, grid: torch.Tensor, carry: torch.Tensor, mission: torch.Tensor) -> torch.Tensor:
        with precision_context(self.config.precision, self.device):
            logits = self._logits(self.params, grid.to(self.device), carry.to(self.device), mission.to(self.device))
        logits = logits.float()  # a no-op in fp32; bf16 logits are sampled in fp32 like the others
        if self.temperature == 0.0:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits / self.temperature, dim=-1)
        return torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=self.generator).reshape(logits.shape[:-1])
