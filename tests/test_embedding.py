"""The embedding-similarity reward (VLM-RM / CLIP score): descriptions, the baseline projection,
the MiniLM text path on the tiny dataset, the CLIP path on a tiny random CLIP, and its params."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX, STATE_TO_IDX

from rgvlm.data.storage import OfflineDataset
from rgvlm.methods.embedding import (
    EmbeddingConfig,
    MiniLMTextEncoder,
    config_from_params,
    describe_dataset,
    label_embedding,
    vlm_rm_reward,
)
from rgvlm.params import ParamError
from rgvlm.rewards.describe import describe_observation, observation_facts
from rgvlm.rl.missions import split_mission


# -- descriptions ----------------------------------------------------------------------
def _cell(kind: str, color: str = "red", state: int = 0) -> tuple[int, int, int]:
    return OBJECT_TO_IDX[kind], COLOR_TO_IDX[color], state


def _layout() -> np.ndarray:
    """An 11 x 11 2x2-room grid (walls on rows/columns 0, 5, 10), everything else empty."""
    grid = np.zeros((11, 11, 3), dtype=np.uint8)
    grid[:, :] = _cell("empty")
    for line in (0, 5, 10):
        grid[line, :] = _cell("wall", "grey")
        grid[:, line] = _cell("wall", "grey")
    return grid


def test_description_of_a_hand_built_observation():
    grid = _layout()
    grid[2, 5] = _cell("door", "red", STATE_TO_IDX["open"])
    grid[5, 2] = _cell("door", "green", STATE_TO_IDX["closed"])
    grid[3, 2] = _cell("ball", "green")
    grid[3, 3] = _cell("key", "yellow")  # right of the green ball: next to it
    grid[8, 8] = _cell("ball", "blue")
    grid[9, 9] = _cell("key", "purple")  # diagonal to the blue ball: not next to it (BabyAI)
    grid[2, 4] = (OBJECT_TO_IDX["agent"], 0, 0)  # facing east, toward the red door
    carry = np.array(_cell("key", "red")[:2], dtype=np.uint8)
    assert describe_observation(grid, carry) == (
        "The red door is open. The green door is closed. The green ball is next to the yellow key. "
        "The agent is in the top-left room. The agent faces the red door. The agent carries the red key."
    )

    grid[2, 4] = _cell("empty")
    grid[7, 5] = (OBJECT_TO_IDX["agent"], 0, 3)  # in the wall line between the bottom rooms, facing a wall
    empty = np.array([OBJECT_TO_IDX["empty"], 0], dtype=np.uint8)
    assert observation_facts(grid, empty)[-2:] == ["The agent stands in a doorway.", "The agent carries nothing."]


def test_descriptions_read_only_the_observation(tiny_dataset):
    """The same observation always gives the same text, wherever (and in whichever episode) it appears."""
    rows = np.arange(tiny_dataset.obs_grid.shape[0])
    states, index = describe_dataset(tiny_dataset, rows)
    for row in rows[::7]:
        text = describe_observation(tiny_dataset.obs_grid[row], tiny_dataset.obs_carry[row])
        assert text == describe_observation(tiny_dataset.obs_grid[row].copy(), tiny_dataset.obs_carry[row].copy())
        assert " ".join(states[index[row]]) == text
    assert len(states) <= len({tiny_dataset.obs_grid[r].tobytes() + tiny_dataset.obs_carry[r].tobytes() for r in rows})


def test_descriptions_state_every_completed_subtask(tiny_dataset):
    """Each sub-task the environment saw completed is stated in the description of the state it led to."""
    data = tiny_dataset
    completed = data.progress.astype(int) - data.progress_before.astype(int)
    checked = 0
    for step in np.flatnonzero(completed > 0):
        episode = data.episodes[data.episode_of_step[step]]
        text = describe_observation(data.obs_grid[data.next_obs_index[step]], data.obs_carry[data.next_obs_index[step]])
        for subtask in episode["subtasks"][data.progress_before[step] : data.progress[step]]:
            if subtask.startswith("open "):
                assert f"{subtask.removeprefix('open ').capitalize()} is open." in text
            else:
                moved, fixed = subtask.removeprefix("put ").split(" next to ")
                assert (f"{moved.capitalize()} is next to {fixed}." in text
                        or f"{fixed.capitalize()} is next to {moved}." in text), (subtask, text)
            checked += 1
    assert checked > 0


# -- the VLM-RM reward -----------------------------------------------------------------
def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_vlm_rm_reward_matches_the_paper_formula():
    rng = np.random.default_rng(0)
    x, g, b = (_unit(rng.normal(size=(5, 8))) for _ in range(3))
    # alpha = 0: 1 - 1/2 ||x - g||^2, i.e. the cosine similarity for unit vectors.
    np.testing.assert_allclose(vlm_rm_reward(x, g, b, 0.0), 1 - 0.5 * np.sum((x - g) ** 2, axis=1), atol=1e-12)
    np.testing.assert_allclose(vlm_rm_reward(x, g, b, 0.0), np.sum(x * g, axis=1), atol=1e-12)
    # any alpha: the explicit matrix (alpha P + (1 - alpha) I), P = d d^T / ||d||^2, d = g - b.
    for alpha in (0.25, 0.5, 1.0):
        for i in range(5):
            d = g[i] - b[i]
            m = alpha * np.outer(d, d) / (d @ d) + (1 - alpha) * np.eye(8)
            expected = 1 - 0.5 * np.sum((m @ (x[i] - g[i])) ** 2)
            assert vlm_rm_reward(x[i], g[i], b[i], alpha) == pytest.approx(expected, abs=1e-12)


def test_full_projection_ignores_what_is_orthogonal_to_the_baseline_direction():
    g, b = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])  # direction (1, -1, 0)
    x = np.array([0.6, 0.8, 0.0])
    sideways = x + np.array([0.0, 0.0, 0.7]) + 0.3 * np.array([1.0, 1.0, 0.0])  # orthogonal to (1, -1, 0)
    assert vlm_rm_reward(sideways, g, b, 1.0) == pytest.approx(vlm_rm_reward(x, g, b, 1.0), abs=1e-12)
    assert vlm_rm_reward(sideways, g, b, 0.0) != pytest.approx(vlm_rm_reward(x, g, b, 0.0), abs=1e-3)
    # alpha = 1 by hand: only the coordinate along (g - b) / ||g - b|| counts.
    along = (x - g) @ np.array([1.0, -1.0, 0.0]) / np.sqrt(2)
    assert vlm_rm_reward(x, g, b, 1.0) == pytest.approx(1 - 0.5 * along**2, abs=1e-12)


# -- the MiniLM text path --------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm():
    return MiniLMTextEncoder("cpu", batch_size=64)


def test_minilm_path_end_to_end(tiny_dataset, minilm):
    config = EmbeddingConfig(normalise="none", device="cpu")
    result, stats = label_embedding(tiny_dataset, config, encoder=minilm)
    rewards = result.rewards
    assert result.reward_set == "embedding" and rewards.shape == (tiny_dataset.num_transitions,)
    assert np.all(np.isfinite(rewards)) and np.all(np.abs(rewards) <= 1.0 + 1e-5)
    assert result.cost["lvlm_calls"] == 0 and result.cost["cache_hits"] == 0
    assert result.cost["prompt_tokens"] == 0 and result.cost["completion_tokens"] == 0
    assert result.provenance["lvlm"] is None and result.provenance["alpha"] == 0.0
    assert 0 < stats["texts_embedded"] <= stats["distinct_descriptions"] <= stats["observations"]

    # States where one of the mission's "put X next to Y" goals holds score above the mean.
    holds = np.zeros(tiny_dataset.num_transitions, dtype=bool)
    for step in range(tiny_dataset.num_transitions):
        mission = tiny_dataset.missions[tiny_dataset.mission_of_step[step]]
        row = tiny_dataset.next_obs_index[step]
        text = describe_observation(tiny_dataset.obs_grid[row], tiny_dataset.obs_carry[row]).lower()
        for clause in split_mission(mission):
            if clause.startswith("put "):
                moved, fixed = clause.removeprefix("put ").split(" next to ")
                holds[step] |= f"{moved} is next to {fixed}" in text or f"{fixed} is next to {moved}" in text
    assert 0 < holds.sum() < holds.size
    assert rewards[holds].mean() > rewards.mean()

    again, _ = label_embedding(tiny_dataset, config, encoder=minilm)
    np.testing.assert_array_equal(again.rewards, rewards)

    # The privileged progress is never read: scrambling it changes nothing.
    scrambled = dataclasses.replace(tiny_dataset, progress=np.zeros_like(tiny_dataset.progress))
    np.testing.assert_array_equal(label_embedding(scrambled, config, encoder=minilm)[0].rewards, rewards)


def test_minilm_options(tiny_dataset, minilm):
    base = EmbeddingConfig(device="cpu")
    minmax, _ = label_embedding(tiny_dataset, base, encoder=minilm)
    assert minmax.rewards.min() == 0.0 and minmax.rewards.max() == pytest.approx(1.0)
    delta, _ = label_embedding(tiny_dataset, dataclasses.replace(base, reward="delta", normalise="standardise",
                                                                 alpha=0.5, goal_text="clause_max"), encoder=minilm)
    assert abs(float(delta.rewards.mean())) < 1e-4 and float(delta.rewards.std()) == pytest.approx(1.0, abs=1e-3)
    assert delta.provenance["goal_text"] == "clause_max" and delta.provenance["alpha"] == 0.5


# -- the CLIP path ---------------------------------------------------------------------
def _first_episodes(dataset: OfflineDataset, n: int) -> OfflineDataset:
    episodes = dataset.episodes[:n]
    steps = sum(e["length"] for e in episodes)
    observations = steps + n
    return OfflineDataset(
        manifest=dataset.manifest, episodes=episodes, obs_grid=dataset.obs_grid[:observations],
        obs_carry=dataset.obs_carry[:observations], actions=dataset.actions[:steps],
        rewards=dataset.rewards[:steps], terminals=dataset.terminals[:steps], progress=dataset.progress[:steps],
    )


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from tests.support.tiny_models import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


def test_clip_path_on_a_tiny_random_clip(tiny_dataset, tiny_clip):
    data = _first_episodes(tiny_dataset, 3)
    raw = {"encoder": "clip", "model": str(tiny_clip), "tile_size": 8, "device": "cpu", "normalise": "none",
           "alpha": 0.5}
    batched, stats = label_embedding(data, config_from_params({**raw, "batch_size": 16}))
    assert batched.rewards.shape == (data.num_transitions,) and np.all(np.isfinite(batched.rewards))
    assert batched.cost["lvlm_calls"] == 0 and 0 < stats["frames_embedded"] <= stats["observations"]
    assert batched.provenance["embedding_model"] == {"encoder": "clip", "model": str(tiny_clip), "device": "cpu"}
    again, _ = label_embedding(data, config_from_params({**raw, "batch_size": 16}))
    np.testing.assert_array_equal(again.rewards, batched.rewards)
    unbatched, _ = label_embedding(data, config_from_params({**raw, "batch_size": 1}))
    np.testing.assert_allclose(unbatched.rewards, batched.rewards, atol=1e-5)


# -- params ----------------------------------------------------------------------------
def test_config_defaults_and_errors(tmp_path, tiny_clip):
    assert config_from_params({}) == EmbeddingConfig()
    assert config_from_params({"alpha": 1, "goal_text": "clause_max"}).alpha == 1.0
    assert config_from_params({"encoder": "clip", "model": str(tiny_clip)}).model == str(tiny_clip)
    bad = {
        "embedding.colour": {"colour": "red"},
        "embedding.encoder": {"encoder": "blip"},
        "embedding.model": {"encoder": "clip"},
        "embedding.alpha": {"alpha": 1.5},
        "embedding.goal_text": {"goal_text": "first_unfinished_clause"},
        "embedding.normalise": {"normalise": "softmax"},
        "embedding.batch_size": {"batch_size": 0},
        "embedding.device": {"device": "tpu"},
        "embedding.baseline_prompt": {"baseline_prompt": ""},
    }
    for key, raw in bad.items():
        with pytest.raises(ParamError) as error:
            config_from_params(raw)
        assert error.value.key == key, raw
    for raw in ({"encoder": "clip", "model": str(tmp_path / "missing")}, {"model": str(tiny_clip)}):
        with pytest.raises(ParamError) as error:
            config_from_params(raw)
        assert error.value.key == "embedding.model"
