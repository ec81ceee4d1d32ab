"""Tests of rgvlm.rl.iql / rgvlm.rl.networks: hand-computed losses, a tiny MDP with known
optimal values, exact determinism and resume, config validation, torch.func compatibility."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

from rgvlm.rl.iql import (
    IQLConfig,
    IQLLearner,
    TransitionBatch,
    critic_loss,
    expectile_loss,
    policy_loss,
    value_loss,
)
from rgvlm.rl.networks import (
    DiscreteCritic,
    DiscretePolicy,
    EncoderSpec,
    ValueNetwork,
)
from tests.support.eager import load_checkpoint, make_uniform_sampler, train

# Tiny networks so that the whole file runs in seconds on 2 CPU cores.
SMALL = dict(
    hidden_dim=64,
    num_layers=2,
    grid_height=3,
    grid_width=3,
    num_actions=2,
    mission_slots=2,
    mission_embed_dim=8,
    cell_embed_dim=8,
    conv_channels=8,
    obs_feature_dim=32,
    slot_dim=8,
    mission_feature_dim=16,
    state_feature_dim=64,
)


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    # Intra-op threading only adds overhead for these tiny tensors.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ------------------------------------------------------------------------------------------
# 1. Loss functions on hand-computed numbers
# ------------------------------------------------------------------------------------------


def test_expectile_loss_hand_computed():
    diff = torch.tensor([2.0, -1.0, 0.5, -3.0])  # diff^2 = [4, 1, 0.25, 9]
    # tau=0.7: weights [0.7, 0.3, 0.7, 0.3] -> (2.8 + 0.3 + 0.175 + 2.7) / 4 = 5.975 / 4
    assert expectile_loss(diff, 0.7).item() == pytest.approx(1.49375, rel=1e-6)
    # tau=0.9: weights [0.9, 0.1, 0.9, 0.1] -> (3.6 + 0.1 + 0.225 + 0.9) / 4 = 4.825 / 4
    assert expectile_loss(diff, 0.9).item() == pytest.approx(1.20625, rel=1e-6)
    # tau=0.5 is half the plain MSE: 0.5 * (4 + 1 + 0.25 + 9) / 4
    assert expectile_loss(diff, 0.5).item() == pytest.approx(1.78125, rel=1e-6)


def test_value_loss_direction_and_detach():
    v = torch.zeros(2, requires_grad=True)
    target = torch.tensor([1.0, -1.0], requires_grad=True)
    loss = value_loss(v, target, 0.9)  # diff = target - v = [1, -1] -> (0.9*1 + 0.1*1) / 2
    assert loss.item() == pytest.approx(0.5)
    loss.backward()
    # d/dv of w*(t-v)^2/2 = -w*(t-v): v under its target is pulled up 9x harder than v above.
    torch.testing.assert_close(v.grad, torch.tensor([-0.9, 0.1]))
    assert target.grad is None


def test_critic_loss_done_and_not_done():
    q1 = torch.tensor([1.0, 2.0], requires_grad=True)
    q2 = torch.tensor([0.5, 3.0])
    reward = torch.tensor([1.0, 0.5])
    done = torch.tensor([1.0, 0.0])
    next_v = torch.tensor([10.0, 2.0], requires_grad=True)
    # targets: done -> 1.0 (next_v=10 ignored); not done -> 0.5 + 0.9 * 2 = 2.3
    # q1: [(1-1)^2, (2.3-2)^2] = [0, 0.09] -> 0.045 ; q2: [0.5^2, 0.7^2] = [0.25, 0.49] -> 0.37
    loss = critic_loss(q1, q2, reward, done, next_v, gamma=0.9)
    assert loss.item() == pytest.approx(0.415, rel=1e-6)
    loss.backward()
    assert next_v.grad is None  # bootstrap target is detached
    torch.testing.assert_close(q1.grad, torch.tensor([0.0, -0.3]))  # 2*(q-y)/B


def test_critic_loss_terminal_ignores_next_value():
    args = dict(
        q1_sa=torch.tensor([0.3]),
        q2_sa=torch.tensor([0.3]),
        reward=torch.tensor([1.0]),
        done=torch.tensor([1.0]),
        gamma=0.99,
    )
    a = critic_loss(next_v=torch.tensor([0.0]), **args)
    b = critic_loss(next_v=torch.tensor([1e6]), **args)
    assert a.item() == b.item() == pytest.approx(2 * 0.7**2)


def test_policy_loss_weight_clipping():
    logits = torch.zeros(2, 2, requires_grad=True)  # pi = 0.5 everywhere, log pi = -ln 2
    action = torch.tensor([0, 1])
    adv = torch.tensor([0.0, 10.0], requires_grad=True)
    # weights: exp(3*0) = 1 ; exp(3*10) = 1.07e13 -> clipped to 100
    # loss = -(1 * -ln2 + 100 * -ln2) / 2 = 101 * ln2 / 2
    loss = policy_loss(logits, action, adv, beta=3.0, clip=100.0)
    assert loss.item() == pytest.approx(101 * math.log(2) / 2, rel=1e-6)
    loss.backward()
    assert adv.grad is None  # weights are detached
    # Overflowing exp (inf) must be clipped, not turn into nan.
    huge = policy_loss(logits, action, torch.tensor([0.0, 1e4]), beta=3.0, clip=100.0)
    assert huge.item() == pytest.approx(loss.item())
    # Without hitting the clip the weight is exp(beta * adv): exp(3 * 0.5) = e^1.5
    unclipped = policy_loss(logits, action, torch.tensor([0.0, 0.5]), beta=3.0, clip=100.0)
    assert unclipped.item() == pytest.approx((1 + math.exp(1.5)) * math.log(2) / 2, rel=1e-6)


# ------------------------------------------------------------------------------------------
# 2. A tiny deterministic MDP with hand-computed optimal values
# ------------------------------------------------------------------------------------------
#
#   s0 --a1--> s1 (r=0)        s0 --a0--> s0 (r=0)
#   s1 --a1--> goal (r=1, terminal)        s1 --a0--> s0 (r=0)
#
# gamma = 0.9:  V*(s1) = Q*(s1,a1) = 1 ;  V*(s0) = Q*(s0,a1) = 0.9 * 1 = 0.9
#               Q*(s0,a0) = Q*(s1,a0) = 0.9 * V*(s0) = 0.81
# With the dataset uniform over the 4 (s, a) pairs and tau = 0.99, IQL's fixed point is
# V(s) = 0.99 * Q(s, best) + 0.01 * Q(s, worst), i.e. V(s1) ~ 0.998, V(s0) ~ 0.897: within
# 0.3% of optimal. With tau = 0.5 (mean), V(s1) ~ 0.79 and V(s0) ~ 0.65.

GAMMA = 0.9
V_STAR = [0.9, 1.0]
Q_STAR = [[0.81, 0.9], [0.81, 1.0]]
MDP_CONFIG = dict(SMALL, gamma=GAMMA, beta=10.0, lr=1e-3, polyak=0.05, batch_size=32)
MDP_STEPS = 1000


def _state_grid(k: int) -> torch.Tensor:
    """Distinct 3x3 grid per state: empty floor with object type 5+k in the centre."""
    grid = torch.zeros(3, 3, 3, dtype=torch.uint8)
    grid[..., 0] = 1
    grid[1, 1, 0] = 5 + k
    return grid


def _mdp_dataset() -> dict[str, torch.Tensor]:
    # (state, action, next_state, reward, done); state 2 is the terminal goal.
    transitions = [(0, 0, 0, 0.0, 0.0), (0, 1, 1, 0.0, 0.0), (1, 0, 0, 0.0, 0.0), (1, 1, 2, 1.0, 1.0)]
    n = len(transitions)
    mission = torch.randn(2, 8, generator=torch.Generator().manual_seed(123))
    return dict(
        grid=torch.stack([_state_grid(t[0]) for t in transitions]),
        carry=torch.ones(n, 2, dtype=torch.uint8),
        mission=mission.expand(n, 2, 8).clone(),
        action=torch.tensor([t[1] for t in transitions]),
        reward=torch.tensor([t[3] for t in transitions]),
        next_grid=torch.stack([_state_grid(t[2]) for t in transitions]),
        next_carry=torch.ones(n, 2, dtype=torch.uint8),
        done=torch.tensor([t[4] for t in transitions]),
    )


def _train_mdp(tau: float, seed: int = 0) -> dict[str, torch.Tensor]:
    data = _mdp_dataset()
    learner = IQLLearner(IQLConfig(tau=tau, **MDP_CONFIG), seed=seed)
    train(learner, make_uniform_sampler(data, 32), num_steps=MDP_STEPS, log_every=0)
    states = [0, 2]  # rows of the dataset whose state is s0, s1
    return learner.predict(data["grid"][states], data["carry"][states], data["mission"][states])


@pytest.fixture(scope="module")
def mdp_tau_099():
    return _train_mdp(0.99)


@pytest.mark.slow
def test_mdp_values_approach_optimum(mdp_tau_099):
    pred = mdp_tau_099
    torch.testing.assert_close(pred["v"], torch.tensor(V_STAR), rtol=0.1, atol=0.0)
    torch.testing.assert_close(pred["q"], torch.tensor(Q_STAR), rtol=0.1, atol=0.0)
    # The ordering of actions, which is what the policy relies on, is right in both states.
    assert (pred["q"][:, 1] > pred["q"][:, 0]).all()


@pytest.mark.slow
def test_mdp_policy_picks_better_action(mdp_tau_099):
    assert pred_actions(mdp_tau_099).tolist() == [1, 1]


def pred_actions(pred: dict[str, torch.Tensor]) -> torch.Tensor:
    return pred["logits"].argmax(dim=-1)


@pytest.mark.slow
def test_expectile_effect_lower_tau_lower_value(mdp_tau_099):
    mean_pred = _train_mdp(0.5)
    # Fixed points: tau=0.99 -> (0.897, 0.998); tau=0.5 -> (0.647, 0.791).
    gap = mdp_tau_099["v"] - mean_pred["v"]
    assert (gap > 0.1).all(), (mdp_tau_099["v"], mean_pred["v"])


# ------------------------------------------------------------------------------------------
# 3. Determinism and exact resume
# ------------------------------------------------------------------------------------------


def _random_dataset(n: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    grid = torch.stack(
        [
            torch.randint(0, 11, (n, 3, 3), generator=g),
            torch.randint(0, 6, (n, 3, 3), generator=g),
            torch.randint(0, 4, (n, 3, 3), generator=g),
        ],
        dim=-1,
    ).to(torch.uint8)
    carry = torch.stack([torch.randint(0, 11, (n,), generator=g), torch.randint(0, 6, (n,), generator=g)], dim=-1).to(
        torch.uint8
    )
    return dict(
        grid=grid,
        carry=carry,
        mission=torch.randn(n, 2, 8, generator=g),
        action=torch.randint(0, 2, (n,), generator=g),
        reward=torch.rand(n, generator=g),
        next_grid=grid.roll(1, dims=0),
        next_carry=carry.roll(1, dims=0),
        done=(torch.rand(n, generator=g) < 0.1).float(),
    )


def _full_state(learner: IQLLearner) -> dict[str, torch.Tensor]:
    """Every tensor that defines the run: weights, target, optimiser moments, sampling RNG."""
    out = {}
    for name in ("critic", "target_critic", "value", "policy"):
        for k, v in getattr(learner, name).state_dict().items():
            out[f"{name}.{k}"] = v
    for name in ("critic_optim", "value_optim", "policy_optim"):
        for pid, st in getattr(learner, name).state_dict()["state"].items():
            for k, v in st.items():
                out[f"{name}.{pid}.{k}"] = torch.as_tensor(v)
    out["generator"] = learner.generator.get_state()
    return out


def _assert_identical(a: IQLLearner, b: IQLLearner) -> None:
    sa, sb = _full_state(a), _full_state(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert a.step == b.step


def test_seeded_runs_identical_and_seed_matters():
    sampler = make_uniform_sampler(_random_dataset(), 16)
    cfg = IQLConfig(**SMALL)
    runs = [IQLLearner(cfg, seed=s) for s in (7, 7, 8)]
    for learner in runs:
        for _ in range(20):
            learner.update(sampler(learner.generator))
    _assert_identical(runs[0], runs[1])
    assert not torch.equal(next(runs[0].policy.parameters()), next(runs[2].policy.parameters())), (
        "different seeds must give different runs"
    )


def test_resume_equals_uninterrupted(tmp_path):
    sampler = make_uniform_sampler(_random_dataset(), 16)
    cfg = IQLConfig(**SMALL)

    full = IQLLearner(cfg, seed=3)
    train(full, sampler, num_steps=20, log_every=0)

    ckpt = tmp_path / "run" / "iql.pt"
    first = IQLLearner(cfg, seed=3)
    train(first, sampler, num_steps=10, log_every=0, checkpoint_path=ckpt, checkpoint_every=10)
    assert ckpt.exists()
    del first

    logged = []
    resumed = IQLLearner(cfg, seed=3)  # fresh process stand-in
    train(
        resumed,
        sampler,
        num_steps=20,
        log_every=5,
        checkpoint_path=ckpt,
        checkpoint_every=10,
        on_log=lambda step, m, ups: logged.append((step, m, ups)),
    )
    _assert_identical(full, resumed)

    # Logging picked up at the resumed step with host floats; no temp files left behind.
    assert [s for s, _, _ in logged] == [15, 20]
    assert all(isinstance(v, float) for v in logged[0][1].values())
    assert set(logged[0][1]) >= {"value_loss", "critic_loss", "policy_loss", "q_mean", "v_mean", "adv_mean"}
    assert logged[0][2] > 0
    assert [p.name for p in ckpt.parent.iterdir()] == ["iql.pt"]

    # The final checkpoint holds step 20 and reproduces the run.
    again = IQLLearner(cfg, seed=3)
    load_checkpoint(again, ckpt)
    _assert_identical(full, again)


def test_resume_with_different_hyperparameters_is_refused(tmp_path):
    sampler = make_uniform_sampler(_random_dataset(), 8)
    ckpt = tmp_path / "iql.pt"
    train(IQLLearner(IQLConfig(**SMALL)), sampler, num_steps=1, log_every=0, checkpoint_path=ckpt)
    with pytest.raises(ValueError, match="gamma"):
        load_checkpoint(IQLLearner(IQLConfig(**dict(SMALL, gamma=0.5))), ckpt)


def test_update_wiring_matches_reference_order():
    """Recompute one update's losses from the loss functions: V on min(target Q1, Q2) at the
    data action; policy and Q step with the *updated* V (as in Kostrikov et al.'s code)."""
    cfg = IQLConfig(**dict(SMALL, tau=0.8, beta=2.0, gamma=0.95))
    learner = IQLLearner(cfg, seed=1)
    sampler = make_uniform_sampler(_random_dataset(), 16)
    for _ in range(3):  # let the target critic lag behind the online one
        learner.update(sampler(learner.generator))
    batch = sampler(learner.generator)
    s = (batch.grid, batch.carry, batch.mission)
    critic0, value0, policy0 = (copy.deepcopy(m) for m in (learner.critic, learner.value, learner.policy))
    with torch.no_grad():
        tq = learner.target_critic(*s).gather(-1, batch.action.view(-1, 1, 1).expand(-1, 2, 1)).squeeze(-1)
        assert not torch.equal(tq[:, 0], tq[:, 1])  # twin heads differ, so min is observable
        tq_min = tq.min(dim=1).values
        expected_v_loss = value_loss(value0(*s), tq_min, cfg.tau)
        logits0 = policy0(*s)
        q0 = critic0(*s).gather(-1, batch.action.view(-1, 1, 1).expand(-1, 2, 1)).squeeze(-1)

    metrics = learner.update(batch)

    with torch.no_grad():
        v_new = learner.value(*s)
        next_v_new = learner.value(batch.next_grid, batch.next_carry, batch.mission)
    expected_pi = policy_loss(logits0, batch.action, tq_min - v_new, cfg.beta, cfg.adv_clip)
    expected_q = critic_loss(q0[:, 0], q0[:, 1], batch.reward, batch.done, next_v_new, cfg.gamma)
    torch.testing.assert_close(metrics["value_loss"], expected_v_loss)
    torch.testing.assert_close(metrics["policy_loss"], expected_pi)
    torch.testing.assert_close(metrics["critic_loss"], expected_q)
    torch.testing.assert_close(metrics["adv_mean"], (tq_min - v_new).mean())


def test_update_polyak_and_frozen_target():
    cfg = IQLConfig(**dict(SMALL, polyak=0.25))
    learner = IQLLearner(cfg, seed=0)
    assert not any(p.requires_grad for p in learner.target_critic.parameters())
    before = [p.clone() for p in learner.target_critic.parameters()]
    metrics = learner.update(make_uniform_sampler(_random_dataset(), 8)(learner.generator))
    for old, new, online in zip(before, learner.target_critic.parameters(), learner.critic.parameters(), strict=True):
        torch.testing.assert_close(new, 0.75 * old + 0.25 * online)
    assert learner.step == 1
    for v in metrics.values():
        assert v.ndim == 0 and not v.requires_grad


# ------------------------------------------------------------------------------------------
# 4. Config validation
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tau", 0.0),
        ("tau", 1.0),
        ("gamma", 1.0),
        ("gamma", -0.1),
        ("batch_size", 0),
        ("batch_size", 2.5),
        ("lr", 0.0),
        ("polyak", 0.0),
        ("adv_clip", -1.0),
        ("beta", -1.0),
        ("num_actions", 1),
        ("hidden_dim", 0),
        ("gamma", float("nan")),
        ("shared_encoder", "yes"),
    ],
)
def test_config_validation_names_field(field, value):
    with pytest.raises(ValueError, match=rf"train\.{field}=") as err:
        IQLConfig(**{field: value})
    assert "is invalid: expected" in str(err.value)


def test_default_config_is_valid_and_matches_brief():
    cfg = IQLConfig()
    assert (cfg.gamma, cfg.tau, cfg.beta, cfg.adv_clip, cfg.lr, cfg.batch_size, cfg.polyak) == (
        0.99,
        0.7,
        3.0,
        100.0,
        3e-4,
        256,
        0.005,
    )
    assert dataclasses.replace(cfg, tau=0.9).tau == 0.9


# ------------------------------------------------------------------------------------------
# Networks: shapes on the default contract, torch.func compatibility, sampler
# ------------------------------------------------------------------------------------------


def test_default_shapes_and_act():
    learner = IQLLearner(IQLConfig(hidden_dim=32), seed=0)
    b = 3
    grid = torch.randint(0, 4, (b, 11, 11, 3), dtype=torch.uint8)
    carry = torch.tensor([[1, 0], [5, 2], [10, 5]], dtype=torch.uint8)
    mission = torch.randn(b, 6, 384)
    mission[:, 3:] = 0.0  # unused clause slots
    assert learner.critic(grid, carry, mission).shape == (b, 2, 6)
    assert learner.value(grid, carry, mission).shape == (b,)
    assert learner.policy(grid, carry, mission).shape == (b, 6)
    greedy = learner.act(grid, carry, mission)
    assert greedy.dtype == torch.int64 and greedy.shape == (b,)
    torch.testing.assert_close(greedy, learner.policy(grid, carry, mission).argmax(-1))
    sampled = learner.act(grid, carry, mission, greedy=False, generator=torch.Generator().manual_seed(0))
    assert sampled.shape == (b,) and ((0 <= sampled) & (sampled < 6)).all()
    with pytest.raises(ValueError, match="grid must have shape"):
        learner.value(grid[:, :5], carry, mission)


def test_networks_vmap_over_stacked_runs():
    spec = EncoderSpec(
        height=3,
        width=3,
        mission_slots=2,
        mission_embed_dim=8,
        cell_embed_dim=8,
        conv_channels=8,
        obs_dim=32,
        slot_dim=8,
        mission_dim=16,
        out_dim=64,
    )
    data = _random_dataset(5)
    inputs = (data["grid"], data["carry"], data["mission"])
    for make in (
        lambda: DiscreteCritic(2, 32, 2, spec),
        lambda: ValueNetwork(32, 2, spec),
        lambda: DiscretePolicy(2, 32, 2, spec),
    ):
        models = []
        for seed in (0, 1):
            torch.manual_seed(seed)
            models.append(make())
        params, buffers = torch.func.stack_module_state(models)
        base = copy.deepcopy(models[0]).to("meta")  # structure only

        def call(p, b, base=base):
            return torch.func.functional_call(base, (p, b), inputs)

        stacked = torch.func.vmap(call)(params, buffers)
        for i, model in enumerate(models):
            torch.testing.assert_close(stacked[i], model(*inputs))


def test_uniform_sampler_with_mission_table_and_errors():
    data = _random_dataset(10)
    table = torch.randn(3, 2, 8)
    ids = torch.arange(10) % 3
    sampler = make_uniform_sampler(dict(data, mission=ids, extra=torch.zeros(10)), 4, mission_table=table)
    batch = sampler(torch.Generator().manual_seed(0))
    assert isinstance(batch, TransitionBatch)
    assert batch.mission.shape == (4, 2, 8) and batch.grid.shape == (4, 3, 3, 3)
    # The mission rows belong to the same transitions as the grid rows.
    for i in range(4):
        row = int(torch.nonzero((data["grid"] == batch.grid[i]).flatten(1).all(1))[0])
        torch.testing.assert_close(batch.mission[i], table[ids[row]])
    with pytest.raises(KeyError, match="done"):
        make_uniform_sampler({k: v for k, v in data.items() if k != "done"}, 4)
    with pytest.raises(ValueError, match="batch_size"):
        make_uniform_sampler(data, 0)
    with pytest.raises(ValueError, match="first dimension"):
        make_uniform_sampler(dict(data, reward=data["reward"][:3]), 4)
