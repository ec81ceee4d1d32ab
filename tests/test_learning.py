"""What makes the agent learn: the object-centric encoder, advantage normalisation, the BC
baselines in the stack, held-out episodes, the critic diagnostic, sampled evaluation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from rgvlm.evaluation import bootstrap_interval, evaluate_policies, evaluation_episodes, summarize
from rgvlm.params import EnvConfig, ParamError, train_config
from rgvlm.rl.diagnostics import CriticProbe, discounted_returns, holdout_mask
from rgvlm.rl.iql import IQLConfig, IQLLearner, TransitionBatch, advantage_weights, advantages, encoder_spec
from rgvlm.rl.multirun import DeviceTransitions, MultiRunIQL, StackedPolicy
from rgvlm.rl.networks import EntityStateEncoder
from rgvlm.rl.runs import train_runs
from rgvlm.rl.training import baseline_weights, iql_config_for, scale_rewards
from tests.test_iql import SMALL, _random_dataset

ENTITIES = dict(SMALL, encoder="entities", entity_dim=8, max_entities=4, patch=1, slot_dim=8, mission_feature_dim=8,
                state_feature_dim=16)
HYPER = dict(batch_size=16, hidden_dim=16, num_layers=1, encoder="entities", entity_dim=8, max_entities=12,
             mission_feature_dim=8, state_feature_dim=16, slot_dim=8, lr=1e-3, log_every=5, checkpoint_every=10,
             holdout_fraction=0.2)


@pytest.mark.parametrize("shared_encoder", [False, True], ids=["own-encoders", "shared-encoder"])
def test_stack_with_the_entity_encoder_follows_eager_learners(shared_encoder):
    config = IQLConfig(**ENTITIES, batch_size=8, shared_encoder=shared_encoder)
    data = _random_dataset(32)
    stack, eager = MultiRunIQL(config, [0, 1]), [IQLLearner(config, seed=s) for s in (0, 1)]
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        idx = torch.randint(32, (2, 8), generator=g)
        stacked = stack.update(TransitionBatch(**{k: v[idx] for k, v in data.items()}))
        for r, learner in enumerate(eager):
            metrics = learner.update(TransitionBatch(**{k: v[idx[r]] for k, v in data.items()}))
            for name in ("critic_loss", "value_loss", "policy_loss"):
                torch.testing.assert_close(stacked[name][r], metrics[name], rtol=1e-4, atol=1e-5)


def test_shared_encoder_heads_read_the_policy_features_and_do_not_train_them():
    """With ``shared_encoder`` the critic and value are heads alone, reading the policy encoder's
    features detached: with the policy's learning rate at zero, an update (which trains the critic
    and value) must leave the encoder exactly where it was."""
    config = IQLConfig(**ENTITIES, batch_size=8, shared_encoder=True)
    learner = IQLLearner(config, seed=0)
    assert not any(name.startswith(("q1.encoder", "q2.encoder")) for name, _ in learner.critic.named_parameters())
    assert not any(name.startswith("encoder") for name, _ in learner.value.named_parameters())
    own = IQLLearner(IQLConfig(**ENTITIES, batch_size=8), seed=0)
    assert sum(p.numel() for p in learner.critic.parameters()) < sum(p.numel() for p in own.critic.parameters())
    data = _random_dataset(32)
    batch = TransitionBatch(**{k: v[:8] for k, v in data.items()})
    encoder = {k: v.clone() for k, v in learner.policy.encoder.state_dict().items()}
    learner.policy_optim.param_groups[0]["lr"] = 0.0  # only the critic and value may learn
    learner.update(batch)
    for key, value in learner.policy.encoder.state_dict().items():
        torch.testing.assert_close(value, encoder[key], rtol=0, atol=0)
    critic_view = learner.critic_view(batch.grid, batch.carry, batch.mission)
    torch.testing.assert_close(critic_view[0], learner.policy.encoder(batch.grid, batch.carry, batch.mission))
    assert critic_view[1] is None and not critic_view[0].requires_grad


def _scene(agent=(3, 3), direction=0, objects=(((5, 5), (6, 1, 0)),), size=9):
    grid = torch.zeros(1, size, size, 3, dtype=torch.uint8)
    grid[0, :, :, 0] = 1  # empty floor
    for (y, x), cell in objects:
        grid[0, y, x] = torch.tensor(cell)
    grid[0, agent[0], agent[1]] = torch.tensor([10, 0, direction])
    return grid


def test_entity_encoder_codes_objects_relative_to_the_agent_and_reads_the_mission():
    config = IQLConfig(**dict(ENTITIES, grid_height=9, grid_width=9, max_entities=4, patch=1))
    torch.manual_seed(0)
    encoder = EntityStateEncoder(encoder_spec(config))
    with torch.no_grad():  # drop the absolute cell (the first H + W inputs): only relative codes remain
        encoder.here_embed.weight[:, : 9 + 9] = 0.0
    carry, mission = torch.zeros(1, 2, dtype=torch.uint8), torch.randn(1, 2, 8)
    ball = ((5, 5), (6, 1, 0))
    here = encoder(_scene((3, 3), 0, (ball,)), carry, mission)
    shifted = encoder(_scene((4, 2), 0, (((6, 4), (6, 1, 0)),)), carry, mission)  # agent and ball moved together
    torch.testing.assert_close(here, shifted)
    farther = encoder(_scene((3, 3), 0, (((5, 7), (6, 1, 0)),)), carry, mission)
    assert not torch.allclose(here, farther)
    assert not torch.allclose(here, encoder(_scene((3, 3), 0, (ball,)), carry, torch.randn(1, 2, 8)))
    # No entity at all, or more than max_entities: still a finite encoding.
    assert torch.isfinite(encoder(_scene(objects=()), carry, mission)).all()
    many = tuple(((1, x), (5, x % 6, 0)) for x in range(1, 8))
    assert torch.isfinite(encoder(_scene(objects=many), carry, mission)).all()


def test_advantage_normalisation_makes_beta_scale_free():
    adv = torch.tensor([-0.01, 0.0, 0.02, 0.01])
    raw = advantage_weights(adv, beta=5.0, clip=100.0)
    assert (raw - 1).abs().max() < 0.11  # tiny advantages: every weight about 1
    scaled = advantage_weights(adv * 100, beta=5.0, clip=100.0, normalise=True)
    torch.testing.assert_close(advantage_weights(adv, 5.0, 100.0, normalise=True), scaled, rtol=1e-3, atol=0)
    assert scaled.max() / scaled.min() > 50


@pytest.fixture(scope="module")
def inputs(tiny_dataset):
    rng = np.random.default_rng(0)
    rewards = {"a": rng.random(tiny_dataset.num_transitions).astype(np.float32)}
    table = torch.randn(len(tiny_dataset.missions), 6, 384, generator=torch.Generator().manual_seed(0))
    return tiny_dataset, table, rewards


def test_bc_run_equals_iql_with_beta_zero(inputs):
    """With beta = 0 every advantage weight is 1: IQL's policy step is plain BC, so a BC run
    with all-ones weights must follow it exactly (the critic and value steps are shared)."""
    data, table, rewards = inputs
    config = iql_config_for(data, dict(HYPER, beta=0.0))
    transitions = DeviceTransitions(data, [rewards["a"]], table, "cpu")
    stack = MultiRunIQL(config, [0, 0], [0, 0], bc_rows=[None, 0])
    for _ in range(5):
        stack.train_step(transitions)
    for tensor in stack.policy.values():
        torch.testing.assert_close(tensor[0], tensor[1], rtol=1e-5, atol=1e-6)


def test_filtered_bc_imitates_only_successful_episodes(inputs):
    data, table, rewards = inputs
    weights = baseline_weights(data, "bc_success")
    assert set(np.unique(weights)) <= {0.0, 1.0}
    for episode in data.episodes:
        start = episode["step_start"]
        assert weights[start : start + episode["length"]].tolist() == [float(episode["success"])] * episode["length"]
    # A filtered-BC run whose weights are all zero but on one episode learns only that episode's actions.
    config = iql_config_for(data, dict(HYPER, holdout_fraction=0.0))
    only_first = np.zeros(data.num_transitions, dtype=np.float32)
    only_first[: data.episodes[0]["length"]] = 1.0
    transitions = DeviceTransitions(data, [rewards["a"]], table, "cpu", bc_weights=[only_first])
    stack = MultiRunIQL(config, [0], bc_rows=[1])
    indices = stack._indices(transitions)
    weight = transitions.bc_weight(indices, stack.bc_row_tensor)
    assert torch.equal(weight, torch.as_tensor(only_first)[indices])


def test_holdout_keeps_whole_episodes_per_k_and_is_never_sampled(inputs):
    data, table, rewards = inputs
    mask = holdout_mask(data, 0.34)
    assert np.array_equal(mask, holdout_mask(data, 0.34))  # deterministic
    for k in (1, 2, 3):
        held = {int(e) for e in np.unique(data.episode_of_step[mask]) if data.episodes[e]["k"] == k}
        assert len(held) == 2  # round(0.34 * 6) episodes of every k
        for e in held:
            start, length = data.episodes[e]["step_start"], data.episodes[e]["length"]
            assert mask[start : start + length].all()
    transitions = DeviceTransitions(data, [rewards["a"]], table, "cpu", holdout=mask)
    stack = MultiRunIQL(iql_config_for(data, HYPER), [0, 1])
    drawn = set()
    for _ in range(50):
        drawn |= set(transitions.train_index[stack._indices(transitions)].flatten().tolist())
        stack.step += 1
    assert drawn and not drawn & set(np.flatnonzero(mask).tolist())
    with pytest.raises(ValueError, match="holdout fraction"):
        holdout_mask(data, 1.0)


def test_n_step_transitions_by_hand(inputs):
    """Each n-step transition sums the episode's next n rewards, discounted, and bootstraps from
    the state after them; windows stop at the episode's end; n = 1 is the one-step dataset."""
    data, table, rewards = inputs
    one = DeviceTransitions(data, [rewards["a"]], table, "cpu")
    same = DeviceTransitions(data, [rewards["a"]], table, "cpu", n_step=1, gamma=0.9)
    assert one.discount is None and same.discount is None
    assert torch.equal(one.rewards, same.rewards) and torch.equal(one.next_obs_index, same.next_obs_index)
    n, gamma = 4, 0.9
    multi = DeviceTransitions(data, [rewards["a"]], table, "cpu", n_step=n, gamma=gamma)
    for episode in data.episodes:
        start, length = episode["step_start"], episode["length"]
        for t in range(start, start + length):
            last = min(t + n - 1, start + length - 1)
            expected = sum(gamma ** (i - t) * float(rewards["a"][i]) for i in range(t, last + 1))
            assert multi.rewards[0, t].item() == pytest.approx(expected, rel=1e-5)
            assert multi.next_obs_index[t].item() == data.next_obs_index[last]
            assert multi.done[t].item() == float(data.terminals[last])
            assert multi.discount[t].item() == pytest.approx(gamma ** (last - t + 1), rel=1e-6)
    with pytest.raises(ValueError, match="gamma"):
        DeviceTransitions(data, [rewards["a"]], table, "cpu", n_step=n)


@pytest.mark.parametrize("advantage", ["q", "td"])
def test_n_step_stack_follows_eager_learners_and_checks_its_data(inputs, advantage):
    """The stack's n-step update = an eager learner fed the same n-step batches (discounts included),
    with either advantage; transitions built for another n_step are refused before any update."""
    data, table, rewards = inputs
    config = iql_config_for(data, dict(HYPER, n_step=3, gamma=0.9, advantage=advantage))
    transitions = DeviceTransitions(data, [rewards["a"]], table, "cpu", n_step=3, gamma=0.9)
    stack, eager = MultiRunIQL(config, [0, 1]), [IQLLearner(config, seed=s) for s in (0, 1)]
    for _ in range(4):
        batch = transitions.batch(stack._indices(transitions), stack.reward_rows)
        assert batch.discount is not None and (batch.discount < 0.9 ** 0.5).any()
        stacked = stack.train_step(transitions)
        for r, learner in enumerate(eager):
            metrics = learner.update(TransitionBatch(**{k: None if v is None else v[r] for k, v in vars(batch).items()}))
            for name in ("critic_loss", "value_loss", "policy_loss"):
                torch.testing.assert_close(stacked[name][r], metrics[name], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="expects n_step 1"):
        MultiRunIQL(iql_config_for(data, HYPER), [0]).train_step(transitions)
    with pytest.raises(ValueError, match="n_step"):
        iql_config_for(data, dict(HYPER, n_step=0))


def test_td_advantage_by_hand():
    """"td": r + discount * (1 - done) * V(s') - V(s), whatever Q says; "q": min Q(s, a) - V(s)."""
    q_sa, v = torch.tensor([5.0, 5.0, 5.0]), torch.tensor([1.0, 0.5, 0.2])
    reward, done, next_v = torch.tensor([0.0, 0.3, 1.0]), torch.tensor([0.0, 0.0, 1.0]), torch.tensor([0.8, 0.4, 9.0])
    discount = torch.tensor([0.9, 0.81, 0.9])
    td = advantages("td", q_sa, v, reward, done, next_v, discount)
    torch.testing.assert_close(td, torch.tensor([0.9 * 0.8 - 1.0, 0.3 + 0.81 * 0.4 - 0.5, 1.0 - 0.2]))
    torch.testing.assert_close(advantages("q", q_sa, v, reward, done, next_v, discount), q_sa - v)
    with pytest.raises(ValueError, match="advantage 'mc'"):
        advantages("mc", q_sa, v, reward, done, next_v, discount)
    with pytest.raises(ParamError, match="advantage"):
        train_config({"reward_sets": ["sparse"], "seeds": [0], "advantage": "mc"})


def test_discounted_returns_by_hand(tiny_dataset):
    rewards = np.zeros(tiny_dataset.num_transitions, dtype=np.float32)
    episode = next(e for e in tiny_dataset.episodes if e["success"])
    start, length = episode["step_start"], episode["length"]
    rewards[start + length - 1] = 1.0  # the success step (terminal)
    rewards[start] = 0.5
    returns = discounted_returns(tiny_dataset, rewards, 0.9)
    assert returns[start + length - 1] == pytest.approx(1.0)
    assert returns[start + length - 2] == pytest.approx(0.9)
    assert returns[start] == pytest.approx(0.5 + 0.9 ** (length - 1))


def test_return_range_scaling_gives_critic_targets_of_width_one(tiny_dataset):
    data = tiny_dataset
    sparse = data.terminals.astype(np.float32)
    dense = np.where(data.progress > data.progress_before, 3.0, 0.0).astype(np.float32) + 0.25
    # A 0/1 sparse reward already spans [0, 1]: unchanged.
    assert np.array_equal(scale_rewards(data, sparse, "return_range", 0.9), sparse)
    for gamma in (0.5, 0.9):
        scaled = scale_rewards(data, dense, "return_range", gamma)
        returns = discounted_returns(data, scaled, gamma)
        assert returns.max() - returns.min() == pytest.approx(1.0, rel=1e-5)
        assert np.allclose(scaled / dense, scaled[0] / dense[0])  # one factor for the whole set
    assert scale_rewards(data, dense, "none", 0.9) is not None and np.array_equal(
        scale_rewards(data, dense, "none", 0.9), dense)
    constant = np.zeros_like(dense)
    assert np.array_equal(scale_rewards(data, constant, "return_range", 0.9), constant)
    with pytest.raises(ValueError, match="reward scale 'z-score'"):
        scale_rewards(data, dense, "z-score", 0.9)
    with pytest.raises(ParamError, match="reward_scale"):
        train_config({"reward_sets": ["sparse"], "seeds": [0], "reward_scale": "z-score"})


@pytest.mark.parametrize(("shared_encoder", "advantage"), [(False, "q"), (True, "q"), (False, "td"), (True, "td")],
                         ids=["own-encoders", "shared-encoder", "own-encoders-td", "shared-encoder-td"])
def test_critic_probe_matches_a_direct_computation(inputs, shared_encoder, advantage):
    data, table, rewards = inputs
    config = iql_config_for(data, dict(HYPER, shared_encoder=shared_encoder, advantage=advantage, n_step=2))
    mask = holdout_mask(data, 0.6)  # enough episodes that both successes and failures are held out
    transitions = DeviceTransitions(data, [rewards["a"]], table, "cpu", holdout=mask, n_step=2, gamma=config.gamma)
    stack = MultiRunIQL(config, [0, 1])
    for _ in range(10):
        stack.train_step(transitions)
    probe = CriticProbe(data, transitions, [rewards["a"]], mask, config.gamma)
    result = probe(stack)
    held = np.flatnonzero(mask)
    returns = discounted_returns(data, rewards["a"], config.gamma)[held]
    succeeded = np.array([e["success"] for e in data.episodes], dtype=bool)[data.episode_of_step[held]]
    assert 1 < succeeded.sum() < succeeded.size  # the fixture holds out both kinds of episode
    for r in range(2):
        learner = stack.learner(r)
        out = learner.predict(torch.as_tensor(data.obs_grid[data.obs_index[held]]),
                              torch.as_tensor(data.obs_carry[data.obs_index[held]]),
                              table[torch.as_tensor(data.mission_of_step[held])])
        expected = np.corrcoef(out["v"].numpy(), returns)[0, 1]
        assert float(result["v_return_corr"][r]) == pytest.approx(expected, abs=1e-4)
        expected_success = np.corrcoef(out["v"].numpy()[succeeded], returns[succeeded])[0, 1]
        assert float(result["v_return_corr_success"][r]) == pytest.approx(expected_success, abs=1e-4)
        # The weights the policy step uses: Q's advantage, or the held-out 2-step TD error.
        index = torch.as_tensor(held)
        if advantage == "td":
            nxt = transitions.next_obs_index[index]
            next_v = learner.predict(transitions.obs_grid[nxt], transitions.obs_carry[nxt],
                                     table[torch.as_tensor(data.mission_of_step[held])])["v"]
            adv = (transitions.rewards[0, index] + transitions.discount[index] * (1 - transitions.done[index]) * next_v
                   - out["v"])
        else:
            with torch.no_grad():
                q = learner.target_critic(*learner.critic_view(*learner._inputs(
                    torch.as_tensor(data.obs_grid[data.obs_index[held]]),
                    torch.as_tensor(data.obs_carry[data.obs_index[held]]), table[torch.as_tensor(data.mission_of_step[held])])))
            adv = q.min(dim=1).values.gather(1, transitions.action[index][:, None]).squeeze(1) - out["v"]
        weights = advantage_weights(adv, config.beta, config.adv_clip)
        assert float(result["adv_weight_p90"][r]) == pytest.approx(float(weights.quantile(0.9)), abs=1e-4)
        assert float(result["adv_weight_p10"][r]) == pytest.approx(float(weights.quantile(0.1)), abs=1e-4)
        assert float(result["adv_weight_gt2"][r]) == pytest.approx(float((weights > 2).float().mean()), abs=1e-6)


def test_train_runs_trains_baselines_and_logs_the_diagnostic(inputs, tmp_path):
    data, table, rewards = inputs
    config = iql_config_for(data, dict(HYPER, num_steps=20))
    reward_sets = {"a": rewards["a"], "bc": rewards["a"]}
    rows = train_runs(data, table, reward_sets, {"a": [0, 1], "bc": [0]}, config, "cpu", tmp_path,
                      bc_weights={"bc": baseline_weights(data, "bc")})
    assert {(r["reward_set"], r["seed"]) for r in rows} == {("a", 0), ("a", 1), ("bc", 0)}
    probed = [r for r in rows if "v_return_corr" in r]
    assert sorted({r["step"] for r in probed}) == [10, 20]
    assert all(-1.0 <= r["v_return_corr"] <= 1.0 for r in probed)


def test_sampled_policy_is_reproducible_and_differs_from_greedy(inputs, tmp_path):
    data, table, rewards = inputs
    config = iql_config_for(data, HYPER)
    stack = MultiRunIQL(config, [0])
    states = [stack.run_state(0)["policy"]]
    obs = (torch.as_tensor(data.obs_grid[:40])[None], torch.as_tensor(data.obs_carry[:40])[None],
           table[:1].expand(40, -1, -1)[None])
    greedy = StackedPolicy(config, states)(*obs)
    first, again = (StackedPolicy(config, states, temperature=1.0, seed=3)(*obs) for _ in range(2))
    assert torch.equal(first, again) and not torch.equal(first, greedy)
    with pytest.raises(ValueError, match="temperature"):
        StackedPolicy(config, states, temperature=-1.0)


@pytest.mark.slow
def test_evaluation_does_not_depend_on_the_number_of_workers(inputs, tmp_path):
    data, table, rewards = inputs
    config = iql_config_for(data, dict(HYPER, num_steps=5))
    train_runs(data, table, rewards, [0], config, "cpu", tmp_path)
    episodes = evaluation_episodes(data, (1, 2), ("seen", "fresh"), {"seen": 1, "fresh": 2}, 0)
    assert [e.split for e in episodes if e.k == 1] == ["seen", "fresh", "fresh"]
    env = EnvConfig(**{**data.manifest["env"], "steps_per_subtask": 16})
    policies = {"greedy": 0.0, "sampled": 1.0}
    one = evaluate_policies(tmp_path, [("a", 0)], episodes, env, policies, workers=1)
    two = evaluate_policies(tmp_path, [("a", 0)], episodes, env, policies, workers=2)
    assert one == two and len(one) == 2 * len(episodes)


def test_two_level_bootstrap_counts_episode_noise():
    rng = np.random.default_rng(0)
    # Every seed has the same mean, so seeds alone say "exact"; the episodes say otherwise.
    values = np.array([[0.0, 1.0] * 10, [1.0, 0.0] * 10, [0.0, 1.0] * 10])
    assert bootstrap_interval(values.mean(axis=1), 1000, rng) == (0.5, 0.5)
    low, high = bootstrap_interval(values, 1000, rng)
    assert low < 0.4 and high > 0.6
    frame = pd.DataFrame([{"reward_set": "m", "policy": p, "run_seed": s, "split": "fresh", "k": 1, "completion": c,
                           "success": c == 1.0} for p in ("greedy", "sampled") for s in range(3) for c in values[s]])
    summary = summarize(frame, samples=500)
    assert set(summary["policy"]) == {"greedy", "sampled"} and (summary["num_episodes"] == 60).all()


def test_train_params_seeds_and_baselines():
    raw = {"reward_sets": ["sparse", "oracle"], "seeds": [0, 1], "baselines": ["bc", "bc_success"],
           "extra_seeds": [2, 3], "extra_seeds_for": ["oracle"], "num_steps": 10}
    config = train_config(raw)
    assert config.trained == ("sparse", "oracle", "bc", "bc_success")
    assert config.seeds_for("oracle") == (0, 1, 2, 3) and config.seeds_for("bc") == (0, 1)
    for bad, key in (({"baselines": ["dagger"]}, "train.baselines"), ({"extra_seeds": [1]}, "train.extra_seeds"),
                     ({"extra_seeds_for": ["rg_vlm"]}, "train.extra_seeds_for"),
                     ({"encoder": "transformer"}, "train"), ({"holdout_fraction": 1.0}, "train")):
        with pytest.raises(ParamError, match=key.replace(".", r"\.")):
            train_config({**raw, **bad})


def test_sanity_check_names_where_the_oracle_is_above_or_below_sparse():
    """The claims are read from paired differences decided with Holm's correction (rgvlm.report.story)."""
    from rgvlm.evaluation.paired import decide
    from rgvlm.report import story

    def cell(k, low, high, p):
        return {"split": "fresh", "k": k, "row": "oracle", "reference": "sparse", "kind": "row - sparse",
                "difference": (low + high) / 2, "low": low, "high": high, "p": p}

    rows = [cell(1, 0.2, 0.4, 1e-6), cell(2, 0.1, 0.3, 1e-5), cell(3, -0.3, -0.1, 1e-5), cell(4, -0.05, 0.1, 0.4)]
    line = story(decide(pd.DataFrame(rows)), "sparse+rg_vlm@1")[0]
    assert "resolved above 0 at k in [1, 2] and below at k in [3] (Holm over 4 tests)" in line
    assert "not resolved" in line  # only k=2 of k >= 2 is above
    rows += [cell(5, 0.1, 0.3, 1e-6)]
    assert "can detect a dense reward's benefit" in story(decide(pd.DataFrame(rows)), "sparse+rg_vlm@1")[0]
    # An interval that clears 0 but whose Holm-adjusted p does not: not resolved.
    weak = [cell(2, 0.01, 0.3, 0.02), cell(3, 0.01, 0.3, 0.02), cell(4, 0.01, 0.3, 0.02)]
    assert "above 0 at k in none" in story(decide(pd.DataFrame(weak)), "sparse+rg_vlm@1")[0]
