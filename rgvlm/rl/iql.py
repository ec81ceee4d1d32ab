"""Discrete-action, language-conditioned Implicit Q-Learning (Kostrikov et al., 2021).

IQL never queries the critic on actions outside the dataset:

* V(s) is fitted by expectile regression (expectile ``tau``) to min(target Q1, Q2)(s, a) on
  dataset actions, so with ``tau -> 1`` it approaches the best *in-data* action value;
* Q(s, a) is fitted to ``r + gamma * (1 - done) * V(s')``;
* the policy is extracted by advantage-weighted regression: maximise
  ``min(exp(beta * (Q - V)), adv_clip) * log pi(a | s)`` on dataset actions.

The order inside one update follows the authors' reference implementation
(``ikostrikov/implicit_q_learning``): V step first; the policy and the Q step then use the
*updated* V (advantage and bootstrap target); finally the target critic is Polyak-averaged.

Everything is plain eager PyTorch and device agnostic. The loss functions are pure
module-level functions so they can be checked by hand and reused with ``torch.func``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

# The config (fields, allowed values) lives in the config layer, which imports nothing from rgvlm.rl.
from rgvlm.atomic import temp_prefix
from rgvlm.params import REWARD_SCALES, IQLConfig
from rgvlm.rl.networks import DiscreteCritic, DiscretePolicy, EncoderSpec, ValueNetwork

__all__ = [
    "IQLConfig",
    "REWARD_SCALES",
    "IQLLearner",
    "encoder_spec",
    "TransitionBatch",
    "critic_loss",
    "expectile_loss",
    "policy_loss",
    "save_state_atomic",
    "value_loss",
]


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------

# Fields that only steer the training loop; a checkpoint may be resumed with different values.
LOOP_FIELDS = frozenset({"num_steps", "log_every", "checkpoint_every", "checkpoint_interval_s"})
# Fields added after runs were trained and fingerprinted, with the value those runs had: a config
# records them only when it differs (config_record), so the runs trained before keep their
# fingerprints, checkpoints and outputs byte for byte.
RECORDED_UNLESS_DEFAULT = {"precision": "fp32"}


def config_record(config: IQLConfig) -> dict[str, Any]:
    """The config as checkpoints, fingerprints and ``models/runs.json`` store it: every field but
    those of :data:`RECORDED_UNLESS_DEFAULT` left at their default (``IQLConfig(**record)`` gives
    the config back)."""
    record = dataclasses.asdict(config)
    for key, default in RECORDED_UNLESS_DEFAULT.items():
        if record[key] == default:
            record.pop(key)
    return record


def bf16_native(device: torch.device | str) -> bool:
    """Whether ``device`` multiplies bf16 matrices natively (CPU: oneDNN's AVX512-BF16/AMX check)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else False


def precision_context(precision: str, device: torch.device | str):
    """The context the networks' forward passes run in for ``IQLConfig.precision``: nothing for
    "fp32"; for "bf16", autocast to bfloat16 (matmuls and convolutions in bf16, parameters,
    gradients, Adam state and the losses' reductions in fp32). On a device without native bf16
    it warns (the results are the same, only slower than fp32: bf16 is emulated)."""
    device = torch.device(device)
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise ValueError(f"precision {precision!r}: expected one of fp32, bf16")
    if not bf16_native(device):
        warnings.warn(f"precision bf16 on {device}, which has no native bf16 matmul: emulated, slower than fp32",
                      RuntimeWarning, stacklevel=2)
    return torch.autocast(device.type, dtype=torch.bfloat16)


def encoder_spec(config: IQLConfig) -> EncoderSpec:
    """The :class:`EncoderSpec` shared by every head of the learner."""
    return EncoderSpec(
        height=config.grid_height,
        width=config.grid_width,
        mission_slots=config.mission_slots,
        mission_embed_dim=config.mission_embed_dim,
        cell_embed_dim=config.cell_embed_dim,
        conv_channels=config.conv_channels,
        obs_dim=config.obs_feature_dim,
        slot_dim=config.slot_dim,
        mission_dim=config.mission_feature_dim,
        out_dim=config.state_feature_dim,
        egocentric=config.egocentric,
        kind=config.encoder,
        entity_dim=config.entity_dim,
        max_entities=config.max_entities,
        patch=config.patch,
        grounding=config.grounding,
        clause_tracking=config.clause_tracking,
    )


# --------------------------------------------------------------------------------------------
# Batch
# --------------------------------------------------------------------------------------------


@dataclass
class TransitionBatch:
    """A batch of B transitions (s, a, r, s', done) sharing the contract of ``rgvlm.rl.networks``.

    ``done`` is 1.0 only at true terminal states (goal reached / failure), *not* at time-outs,
    so that bootstrapping continues through truncated episodes. ``next_mission`` is what s'
    reads when it differs from s's (the remaining mission of ``train.mission_view: remaining``);
    None = the same ``mission`` for both.
    """

    grid: torch.Tensor  # uint8 [B, H, W, 3]
    carry: torch.Tensor  # uint8 [B, 2]
    mission: torch.Tensor  # float [B, S, E]
    action: torch.Tensor  # int64 [B]
    reward: torch.Tensor  # float32 [B]
    next_grid: torch.Tensor  # uint8 [B, H, W, 3]
    next_carry: torch.Tensor  # uint8 [B, 2]
    done: torch.Tensor  # float32 [B]
    # Per-transition discount of the bootstrap, float32 [B]: gamma ** m for an m-step target
    # (``reward`` is then the discounted sum of m rewards and ``next_*`` the state m steps on;
    # see rgvlm.rl.multirun.n_step_layout). None = one-step transitions, discount ``config.gamma``.
    discount: torch.Tensor | None = None
    next_mission: torch.Tensor | None = None  # float [B, S, E]

    def to(self, device: torch.device | str) -> TransitionBatch:
        """Copy of the batch with every tensor on ``device``."""
        return TransitionBatch(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name).to(device)
                                  for f in dataclasses.fields(self)})


# The fields every batch has (``discount`` and ``next_mission`` are optional).
BATCH_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TransitionBatch)
                                      if f.name not in ("discount", "next_mission"))


# --------------------------------------------------------------------------------------------
# Losses (pure functions)
# --------------------------------------------------------------------------------------------


def expectile_loss(diff: torch.Tensor, tau: float) -> torch.Tensor:
    """Asymmetric L2: ``mean(|tau - 1(diff < 0)| * diff**2)`` with ``diff = target_q - v``.

    Positive residuals (V below the target) are weighted ``tau`` and negative ones ``1 - tau``,
    so for ``tau > 0.5`` the minimiser sits above the mean, towards the upper tail.
    """
    weight = torch.where(diff < 0, 1.0 - tau, tau)
    return (weight * diff.square()).mean()


def value_loss(v: torch.Tensor, target_q_min: torch.Tensor, tau: float) -> torch.Tensor:
    """Expectile regression of ``v`` [B] onto ``min(target Q1, Q2)(s, a)`` [B] (target detached)."""
    return expectile_loss(target_q_min.detach() - v, tau)


def critic_loss(
    q1_sa: torch.Tensor,
    q2_sa: torch.Tensor,
    reward: torch.Tensor,
    done: torch.Tensor,
    next_v: torch.Tensor,
    gamma: float | torch.Tensor,
) -> torch.Tensor:
    """``mean((y - q1)^2) + mean((y - q2)^2)`` with ``y = r + gamma * (1 - done) * V(s')`` detached.
    ``gamma`` is the discount, or a tensor [B] of per-transition discounts (n-step targets)."""
    target = (reward + gamma * (1.0 - done) * next_v).detach()
    return (target - q1_sa).square().mean() + (target - q2_sa).square().mean()


def advantages(kind: str, target_q_sa: torch.Tensor, v_s: torch.Tensor, reward: torch.Tensor, done: torch.Tensor,
               next_v: torch.Tensor, discount: float | torch.Tensor) -> torch.Tensor:
    """What the policy step weights each dataset action by (``IQLConfig.advantage``).

    ``"q"``: ``min Q_target(s, a) - V(s)``, the IQL paper's. ``"td"``: the transition's TD error
    ``r + discount * (1 - done) * V(s') - V(s)`` (with n-step transitions: the next n rewards and
    ``V`` n steps ahead), an estimate of the same advantage read off the data's own continuation
    (AWR's). Why offer it: in a grid world one action changes the return by about
    ``(1 - gamma) * V``, so the argmax of a learned Q must resolve a few per cent of V, which a
    critic at a few thousand updates does not (``experiments/action_ranking.py``); the n-step TD
    error compares V n steps apart and needs only V, which fits far better than Q ranks actions."""
    if kind == "q":
        return target_q_sa - v_s
    if kind == "td":
        return reward + discount * (1.0 - done) * next_v - v_s
    raise ValueError(f"advantage {kind!r}: expected one of ('q', 'td')")


def advantage_weights(adv: torch.Tensor, beta: float, clip: float, normalise: bool = False) -> torch.Tensor:
    """``min(exp(beta * adv), clip)``, detached; with ``normalise``, ``adv`` is first divided by
    its batch standard deviation, so that ``beta`` means the same whatever the reward's scale
    (with 0/1 rewards and gamma near 1, raw advantages are tiny and every weight is about 1).
    ``exp`` may overflow to ``inf`` for huge advantages; the clip maps that back to ``clip``."""
    adv = adv.detach()
    if normalise:
        adv = adv / (adv.std() + 1e-6)
    return torch.exp(beta * adv).clamp(max=clip)


def weighted_log_likelihood(logits: torch.Tensor, action: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``-mean(weights * log pi(action | s))``: the policy objective of IQL and of (filtered) BC."""
    log_prob = F.log_softmax(logits, dim=-1).gather(-1, action.long().unsqueeze(-1)).squeeze(-1)
    return -(weights * log_prob).mean()


def policy_loss(
    logits: torch.Tensor, action: torch.Tensor, adv: torch.Tensor, beta: float, clip: float, normalise: bool = False
) -> torch.Tensor:
    """Advantage-weighted regression: ``-mean(min(exp(beta*adv), clip) * log pi(action | s))``.

    The weights are detached (:func:`advantage_weights`): gradients only flow into the logits.
    """
    return weighted_log_likelihood(logits, action, advantage_weights(adv, beta, clip, normalise))


# --------------------------------------------------------------------------------------------
# Learner
# --------------------------------------------------------------------------------------------


def _gather_actions(q: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """Q values of the taken actions: ``q`` [B, 2, A], ``action`` [B] -> [B, 2]."""
    index = action.long().view(-1, 1, 1).expand(-1, q.shape[1], 1)
    return q.gather(-1, index).squeeze(-1)


class IQLLearner:
    """Networks, target critic, optimisers and step counter of one IQL run.

    Construction is deterministic given ``seed``: the networks are initialised on the CPU
    under ``torch.manual_seed(seed)`` inside ``torch.random.fork_rng`` (the caller's global RNG
    is untouched), then moved to ``device``, so the initial weights do not depend on the
    device. ``self.generator`` (a ``torch.Generator`` on ``device`` seeded with ``seed``) is the
    RNG used for batch sampling by :func:`train`; it is part of :meth:`state_dict`.
    """

    def __init__(self, config: IQLConfig, device: torch.device | str = "cpu", seed: int = 0) -> None:
        self.config = config
        self.device = torch.device(device)
        self.seed = int(seed)
        spec = encoder_spec(config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            shared = config.shared_encoder
            critic = DiscreteCritic(config.num_actions, config.hidden_dim, config.num_layers, spec, shared)
            value = ValueNetwork(config.hidden_dim, config.num_layers, spec, shared)
            policy = DiscretePolicy(config.num_actions, config.hidden_dim, config.num_layers, spec)
        self.critic = critic.to(self.device)
        self.value = value.to(self.device)
        self.policy = policy.to(self.device)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)

        # The fused kernel is several times faster than the per-parameter loop for these many
        # small tensors; it exists for CPU and CUDA, elsewhere fall back to the default.
        fused = True if self.device.type in ("cpu", "cuda") else None
        self.critic_optim = torch.optim.Adam(self.critic.parameters(), lr=config.lr, fused=fused)
        self.value_optim = torch.optim.Adam(self.value.parameters(), lr=config.lr, fused=fused)
        self.policy_optim = torch.optim.Adam(self.policy.parameters(), lr=config.lr, fused=fused)

        # Cached for the Polyak update; load_state_dict copies in place, so these stay valid.
        self._online_critic_params = list(self.critic.parameters())
        self._target_critic_params = list(self.target_critic.parameters())

        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(self.seed)
        self.step = 0  # completed updates

    # ---------------------------------------------------------------- training step

    def update(self, batch: TransitionBatch) -> dict[str, torch.Tensor]:
        """One IQL gradient step on ``batch``; returns detached scalar tensors (no host sync)."""
        with precision_context(self.config.precision, self.device):
            return self._update(batch)

    def _update(self, batch: TransitionBatch) -> dict[str, torch.Tensor]:
        cfg = self.config
        s = (batch.grid, batch.carry, batch.mission)
        # What the critic and value read, s and s' (with a shared encoder: the policy encoder's
        # features before this update, as in the multi-run stack).
        cs = self.critic_view(*s)
        next_mission = batch.mission if batch.next_mission is None else batch.next_mission
        cs_next = self.critic_view(batch.next_grid, batch.next_carry, next_mission)

        # 1. Value: expectile regression onto min of the *target* twin Q at dataset actions.
        with torch.no_grad():
            target_q_sa = _gather_actions(self.target_critic(*cs), batch.action).min(dim=1).values
        v = self.value(*cs)
        v_loss = value_loss(v, target_q_sa, cfg.tau)
        self.value_optim.zero_grad(set_to_none=True)
        v_loss.backward()
        self.value_optim.step()

        # V(s) for the advantage and V(s') for the bootstrap, both with the updated value net,
        # as in the reference implementation; one forward pass over [s; s'].
        with torch.no_grad():
            both = self.value(*(None if a is None else torch.cat([a, b]) for a, b in zip(cs, cs_next, strict=True)))
            v_s, next_v = both.chunk(2)
            discount = cfg.gamma if batch.discount is None else batch.discount
            adv = advantages(cfg.advantage, target_q_sa, v_s, batch.reward, batch.done, next_v, discount)

        # 2. Policy: advantage-weighted regression on dataset actions.
        pi_loss = policy_loss(self.policy(*s), batch.action, adv, cfg.beta, cfg.adv_clip, cfg.adv_normalise)
        self.policy_optim.zero_grad(set_to_none=True)
        pi_loss.backward()
        self.policy_optim.step()

        # 3. Critic: TD regression of both Q heads onto r + gamma * (1 - done) * V(s').
        q_sa = _gather_actions(self.critic(*cs), batch.action)
        q_loss = critic_loss(q_sa[:, 0], q_sa[:, 1], batch.reward, batch.done, next_v, discount)
        self.critic_optim.zero_grad(set_to_none=True)
        q_loss.backward()
        self.critic_optim.step()

        # 4. Target critic: target <- target + polyak * (online - target).
        with torch.no_grad():
            torch._foreach_lerp_(self._target_critic_params, self._online_critic_params, cfg.polyak)

        self.step += 1
        return {
            "value_loss": v_loss.detach(),
            "critic_loss": q_loss.detach(),
            "policy_loss": pi_loss.detach(),
            "q_mean": q_sa.detach().mean(),
            "v_mean": v.detach().mean(),
            "adv_mean": adv.mean(),
        }

    @torch.no_grad()
    def critic_view(self, grid: torch.Tensor, carry: torch.Tensor, mission: torch.Tensor) -> tuple:
        """The inputs of the critic and value networks for states ``(grid, carry, mission)``: the
        states themselves, or, with ``shared_encoder``, ``(features, None, mission)`` where the
        features are the policy encoder's, detached (the critic's losses do not train it)."""
        if not self.config.shared_encoder:
            return grid, carry, mission
        return self.policy.encoder(grid, carry, mission), None, mission

    # ---------------------------------------------------------------- inference

    def _inputs(self, grid: torch.Tensor, carry: torch.Tensor, mission: torch.Tensor):
        return grid.to(self.device), carry.to(self.device), mission.to(self.device)

    @torch.no_grad()
    def act(
        self,
        grid: torch.Tensor,
        carry: torch.Tensor,
        mission: torch.Tensor,
        greedy: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Actions ``[B]`` (int64) for batched observations: argmax of the policy logits, or a
        sample from the categorical policy (using ``generator``, or the global RNG if None)."""
        with precision_context(self.config.precision, self.device):
            logits = self.policy(*self._inputs(grid, carry, mission)).float()
        if greedy:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits, dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

    @torch.no_grad()
    def predict(self, grid: torch.Tensor, carry: torch.Tensor, mission: torch.Tensor) -> dict[str, torch.Tensor]:
        """Diagnostics for a batch of states: ``q`` = min(Q1, Q2) [B, A] of the online critic,
        ``v`` [B] and policy ``logits`` [B, A]."""
        s = self._inputs(grid, carry, mission)
        with precision_context(self.config.precision, self.device):
            cs = self.critic_view(*s)
            out = {
                "q": self.critic(*cs).min(dim=1).values,
                "v": self.value(*cs),
                "logits": self.policy(*s),
            }
        return {name: value.float() for name, value in out.items()}

    # ---------------------------------------------------------------- (de)serialisation

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: weights, target, optimisers, step, sampling RNG."""
        return {
            "config": config_record(self.config),
            "seed": self.seed,
            "step": self.step,
            "critic": self.critic.state_dict(),
            "target_critic": self.target_critic.state_dict(),
            "value": self.value.state_dict(),
            "policy": self.policy.state_dict(),
            "critic_optim": self.critic_optim.state_dict(),
            "value_optim": self.value_optim.state_dict(),
            "policy_optim": self.policy_optim.state_dict(),
            "generator_device": self.generator.device.type,
            "generator_state": self.generator.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output. Raises ValueError if the stored config differs
        from this learner's in anything but the loop fields (num_steps, log_every,
        checkpoint_every)."""
        ours = dataclasses.asdict(self.config)
        # A field the checkpoint lacks was added after it was written; new fields default to the
        # behaviour that came before them, so the checkpoint was trained with the default.
        defaults = {f.name: f.default for f in dataclasses.fields(self.config) if f.default is not dataclasses.MISSING}
        theirs = {**defaults, **state["config"]}
        diff = {k: (theirs.get(k), ours[k]) for k in ours if k not in LOOP_FIELDS and theirs.get(k) != ours[k]}
        if diff:
            raise ValueError(f"checkpoint config differs from the learner's: {{field: (ckpt, ours)}} = {diff}")
        self.critic.load_state_dict(state["critic"])
        self.target_critic.load_state_dict(state["target_critic"])
        self.value.load_state_dict(state["value"])
        self.policy.load_state_dict(state["policy"])
        self.critic_optim.load_state_dict(state["critic_optim"])
        self.value_optim.load_state_dict(state["value_optim"])
        self.policy_optim.load_state_dict(state["policy_optim"])
        self.seed = int(state["seed"])
        self.step = int(state["step"])
        if state["generator_device"] == self.generator.device.type:
            self.generator.set_state(state["generator_state"].cpu())
        else:
            # CPU and CUDA generators have incompatible state formats; the batch stream cannot be
            # continued, so derive a fresh but deterministic one.
            warnings.warn(
                f"checkpoint sampling RNG was on {state['generator_device']}, learner is on "
                f"{self.generator.device.type}: reseeding it; the resumed run will not match an "
                "uninterrupted one bit for bit",
                stacklevel=2,
            )
            self.generator.manual_seed(self.seed + self.step)


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def save_state_atomic(state: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """``torch.save`` atomically: temp file in the same directory, fsync, ``os.replace`` --
    a crash mid-write never leaves a truncated checkpoint at ``path``."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # Named after this process (rgvlm.atomic.temp_prefix): a crash mid-write leaves a torn
    # temporary inside outputs/models (a persist output), which the next stage start sweeps.
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=temp_prefix(Path(path)), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(dict(state), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
