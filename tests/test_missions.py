"""Mission encoders: per-clause word codes and the frozen sentence encoder."""

from __future__ import annotations

import numpy as np
import pytest

from rgvlm.rl.missions import (
    CLAUSE_VOCABULARY,
    MAX_CLAUSE_WORDS,
    MISSION_ENCODERS,
    ClauseTokenEmbedder,
    mission_embedder,
)


def test_word_codes_are_one_hot_per_position_and_keep_roles_apart():
    embedder = ClauseTokenEmbedder()
    a, b, two = embedder.embed(["put the blue ball next to the red key", "put the red key next to the blue ball",
                                "open the red door, then put the blue ball next to the red key"])
    assert a.shape == (6, MAX_CLAUSE_WORDS * len(CLAUSE_VOCABULARY)) == (6, embedder.dim)
    words = a[0].reshape(MAX_CLAUSE_WORDS, len(CLAUSE_VOCABULARY))
    assert words.sum() == 9 and set(words.sum(1)[:9]) == {1.0} and words[9:].sum() == 0
    assert CLAUSE_VOCABULARY[int(words[2].argmax())] == "blue" and CLAUSE_VOCABULARY[int(words[7].argmax())] == "red"
    # The same words in other roles give another code (a sentence vector nearly blurs them).
    assert not np.array_equal(a, b) and a.sum() == b.sum()
    assert np.array_equal(two[1], a[0]) and a[1:].sum() == 0 and two[2:].sum() == 0


@pytest.mark.parametrize("mission, match", [
    ("put the blue ball next to the crimson key", "word 'crimson'"),
    ("open the red door " + "and the red door " * 3, "more than 10"),
    (", then ".join(["open the red door"] * 7), "more than 6 slots"),
])
def test_bad_missions_name_what_is_wrong(mission, match):
    with pytest.raises(ValueError, match=match):
        ClauseTokenEmbedder().embed([mission])


def test_unknown_encoder_is_rejected():
    assert "tokens" in MISSION_ENCODERS
    with pytest.raises(ValueError, match="mission encoder 'bert'"):
        mission_embedder("bert")
