"""The learned reward model shared by ERL-VLM and RL-VLM-F: losses by hand, sampling, the ensemble,
saving, and segment sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rgvlm.rewards.reward_model import (
    RatingObjective,
    RewardEnsemble,
    RewardModelConfig,
    RewardNetwork,
    TransitionInputs,
    batch_class_weights,
    bradley_terry_loss,
    class_bounds,
    encoder_spec,
    load_reward_model,
    minmax_normalise,
    rating_accuracy,
    rating_batch_loss,
    rating_loss,
    rating_probabilities,
    relabel,
    save_reward_model,
    stratified_batch,
    torch_threads,
)
from rgvlm.rewards.segments import sample_segment_pairs, sample_segments, segment_steps
from rgvlm.rl.networks import EncoderSpec

SMALL = EncoderSpec(height=5, width=5, mission_slots=2, mission_embed_dim=8, conv_channels=0, obs_dim=8, slot_dim=4,
                    mission_dim=8, out_dim=8, egocentric=True)


def small_inputs(batch: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    grid = torch.randint(0, 4, (batch, 5, 5, 3), generator=generator, dtype=torch.uint8)
    grid[:, 2, 2] = torch.tensor([10, 0, 1], dtype=torch.uint8)  # the agent
    carry = torch.zeros(batch, 2, dtype=torch.uint8)
    mission = torch.randn(batch, 2, 8, generator=generator)
    action = torch.randint(0, 6, (batch,), generator=generator)
    return grid, carry, mission, action


# -- the rating objective, by hand ------------------------------------------------------
def test_minmax_and_class_bounds_from_label_proportions():
    normalised = minmax_normalise(torch.tensor([2.0, 0.0, 4.0, 1.0]))
    torch.testing.assert_close(normalised, torch.tensor([0.5, 0.0, 1.0, 0.25]))
    # Labels: two of class 0, one of 1, one of 2 -> the two smallest returns fall in class 0.
    bounds = class_bounds(normalised, torch.tensor([0, 0, 1, 2]), 3)
    torch.testing.assert_close(bounds, torch.tensor([0.0, 0.375, 0.75, 1.0]))
    # An absent class gets an empty interval; all labels in the top class -> every bound at 0.
    torch.testing.assert_close(class_bounds(normalised, torch.tensor([2, 2, 2, 2]), 3), torch.tensor([0.0, 0, 0, 1]))
    torch.testing.assert_close(class_bounds(normalised, torch.tensor([0, 0, 2, 2]), 3),
                               torch.tensor([0.0, 0.375, 0.375, 1.0]))
    assert not minmax_normalise(torch.ones(3)).isnan().any()  # equal returns: no division by zero


def test_rating_probabilities_by_hand():
    bounds = torch.tensor([0.0, 0.375, 0.75, 1.0])
    probabilities = rating_probabilities(torch.tensor([0.5]), bounds, temperature=0.1)
    # D_k = (R - b_k)(R - b_{k+1}) for R = 0.5: 0.0625, -0.03125, 0.125; softmax(-D / 0.1).
    logits = torch.tensor([-0.625, 0.3125, -1.25])
    torch.testing.assert_close(probabilities[0], torch.softmax(logits, 0))
    assert probabilities[0].argmax() == 1  # 0.5 lies inside the middle interval
    # The lower the temperature, the more certain.
    sharp = rating_probabilities(torch.tensor([0.5]), bounds, temperature=0.01)
    assert sharp[0, 1] > probabilities[0, 1] > 1 / 3


def test_class_weighted_mae_and_ce_by_hand():
    probabilities = torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    labels = torch.tensor([0, 0, 2])
    # Weights inverse to the batch's class frequency, averaging 1 over the samples: 3 / (2 * count).
    torch.testing.assert_close(batch_class_weights(labels, 3), torch.tensor([0.75, 0.0, 1.5]))
    mae = [0.3 + 0.2 + 0.1, 0.4 + 0.3 + 0.1, 0.2 + 0.2 + 0.4]  # sum_k |onehot - p|
    weighted = (0.75 * mae[0] + 0.75 * mae[1] + 1.5 * mae[2]) / 3.0
    assert rating_loss(probabilities, labels, "mae", class_weighted=True).item() == pytest.approx(weighted)
    assert rating_loss(probabilities, labels, "mae", class_weighted=False).item() == pytest.approx(sum(mae) / 3)
    ce = [-math.log(0.7), -math.log(0.6), -math.log(0.6)]
    assert rating_loss(probabilities, labels, "ce", class_weighted=False).item() == pytest.approx(sum(ce) / 3)
    assert rating_loss(probabilities, labels, "ce", class_weighted=True).item() == pytest.approx(
        (0.75 * ce[0] + 0.75 * ce[1] + 1.5 * ce[2]) / 3.0)
    with pytest.raises(ValueError, match="loss='mse'"):
        rating_loss(probabilities, labels, "mse")


def test_rating_loss_prefers_returns_in_the_rated_order():
    labels = torch.tensor([0, 1, 2, 2])
    objective = RatingObjective(num_classes=3, temperature=0.05)
    ordered = rating_batch_loss(torch.tensor([[0.0, 1.0, 2.0, 2.2]]), labels, objective)
    reversed_ = rating_batch_loss(torch.tensor([[2.2, 2.0, 1.0, 0.0]]), labels, objective)
    assert ordered < reversed_
    assert rating_accuracy(torch.tensor([[0.0, 1.0, 2.0, 2.2]]), labels, objective) == 1.0
    # The loss reaches the returns (the model) through the min-max normalisation.
    returns = torch.tensor([[1.0, 0.5, 2.0, 0.0]], requires_grad=True)
    rating_batch_loss(returns, labels, objective).backward()
    assert returns.grad is not None and returns.grad.abs().sum() > 0


def test_stratified_batches_take_minority_classes_first():
    labels = np.array([0] * 90 + [1] * 8 + [2] * 2)
    rng = np.random.default_rng(0)
    batch = stratified_batch(labels, 12, rng)
    assert len(batch) == len(set(batch.tolist())) == 12
    counts = np.bincount(labels[batch], minlength=3)
    assert counts.tolist() == [5, 5, 2]  # class 2 gives all it has, class 1 half of the rest
    even = stratified_batch(np.array([0] * 50 + [1] * 50 + [2] * 50), 30, rng)
    assert np.bincount(np.repeat([0, 1, 2], 50)[even]).tolist() == [10, 10, 10]
    assert len(stratified_batch(labels[:5], 64, rng)) == 5  # never more than there are


def test_bradley_terry_loss_by_hand():
    r0, r1 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    preferences = torch.tensor([1.0, 0.0, 0.0])
    # P(1 > 0) = sigmoid(R1 - R0) = sigmoid(1), sigmoid(0), sigmoid(-2).
    expected = -(math.log(1 / (1 + math.exp(-1))) + math.log(0.5) + math.log(1 - 1 / (1 + math.exp(2)))) / 3
    assert bradley_terry_loss(r0, r1, preferences).item() == pytest.approx(expected, rel=1e-6)
    # Batched over ensemble members: the mean over members and pairs.
    stacked = bradley_terry_loss(torch.stack([r0, r1]), torch.stack([r1, r0]), preferences)
    swapped = bradley_terry_loss(r1, r0, preferences)
    assert stacked.item() == pytest.approx((expected + swapped.item()) / 2, rel=1e-6)


# -- the network and the ensemble -------------------------------------------------------
def test_ensemble_members_equal_separate_networks():
    ensemble = RewardEnsemble(SMALL, hidden_dim=8, num_layers=1, size=3, seed=4)
    inputs = small_inputs(10)
    out = ensemble(*inputs)
    assert out.shape == (3, 10) and out.abs().max() < 1  # tanh-bounded
    for member in range(3):
        network = RewardNetwork(SMALL, hidden_dim=8, num_layers=1)
        network.load_state_dict({name.replace("__", "."): value[member] for name, value in
                                 ((k.removeprefix("stacked."), v) for k, v in ensemble.state_dict().items()
                                  if k.startswith("stacked."))})
        torch.testing.assert_close(network(*inputs), out[member])
    assert not torch.equal(out[0], out[1])  # members are initialised differently


def test_ensemble_init_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = RewardEnsemble(SMALL, 8, 1, size=2, seed=7)
    after = torch.rand(1)
    assert torch.equal(before, after)
    b = RewardEnsemble(SMALL, 8, 1, size=2, seed=7)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_save_and_load_round_trip(tmp_path):
    ensemble = RewardEnsemble(SMALL, 8, 1, size=2, seed=1)
    ensemble.reward_low.fill_(-0.5)
    ensemble.reward_high.fill_(0.5)
    save_reward_model(tmp_path / "m" / "reward_model.pt", ensemble, {"method": "test"})
    loaded, extra = load_reward_model(tmp_path / "m" / "reward_model.pt")
    inputs = small_inputs(6)
    torch.testing.assert_close(loaded.reward(*inputs), ensemble.reward(*inputs))
    assert extra == {"method": "test"} and not list((tmp_path / "m").glob("*.tmp"))


def test_torch_threads_restores_the_setting():
    previous = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == previous


def test_relabel_normalises_to_unit_range_and_the_model_reproduces_it(tiny_dataset):
    table = torch.zeros(len(tiny_dataset.missions), 6, 384)
    config = RewardModelConfig(feature_dim=16, hidden_dim=16, ensemble_size=2)
    model = RewardEnsemble(encoder_spec(tiny_dataset, table, config), 16, 2, 2, seed=0)
    rewards, info = relabel(model, tiny_dataset, table, batch_size=300)
    assert rewards.shape == (tiny_dataset.num_transitions,) and rewards.dtype == np.float32
    assert rewards.min() == pytest.approx(0.0, abs=1e-6) and rewards.max() == pytest.approx(1.0, abs=1e-6)
    steps = np.arange(0, tiny_dataset.num_transitions, 7)
    with torch.no_grad():
        again = model.reward(*TransitionInputs(tiny_dataset, table)(steps)).numpy()
    np.testing.assert_allclose(again, rewards[steps], atol=1e-6)
    assert info["raw_min"] < info["raw_max"]


# -- segments ---------------------------------------------------------------------------
def test_segments_are_seeded_distinct_and_inside_their_episodes(tiny_dataset):
    segments = sample_segments(tiny_dataset, 50, 8, seed=3)
    assert segments == sample_segments(tiny_dataset, 50, 8, seed=3) != sample_segments(tiny_dataset, 50, 8, seed=4)
    assert len(set(segments)) == 50 and segments == sorted(segments)
    for s in segments:
        length = tiny_dataset.episodes[s.episode]["length"]
        assert 0 <= s.start < s.end <= length and s.length == min(8, length)
    steps, mask = segment_steps(tiny_dataset, segments, 8)
    assert steps.shape == mask.shape == (50, 8)
    assert np.all(tiny_dataset.episode_of_step[steps] == np.array([s.episode for s in segments])[:, None])
    assert mask.sum() == sum(s.length for s in segments)
    everything = sample_segments(tiny_dataset, 10**6, 8, seed=0)  # capped at the number of windows
    assert len(everything) == len(set(everything)) < 10**6


def test_pairs_share_a_mission_and_differ(tiny_dataset):
    pairs = sample_segment_pairs(tiny_dataset, 40, 8, seed=0)
    assert pairs == sample_segment_pairs(tiny_dataset, 40, 8, seed=0) and len(pairs) == 40
    episodes = tiny_dataset.episodes
    for a, b in pairs:
        assert a != b and episodes[a.episode]["mission"] == episodes[b.episode]["mission"]
