"""Trajectory segments: what ERL-VLM rates and RL-VLM-F compares, and how they are asked about.

A *segment* is ``segment_length`` consecutive transitions of one dataset episode (the whole
episode when it is shorter). Both methods draw their queries here, deterministically in a
seed, so that the LVLM budget (``num_queries``) is spent on the same kind of object and a rerun
asks exactly the same questions (and so hits the response cache).

Sampling is uniform over *windows*: every start position of every episode is equally likely,
so long episodes get proportionally more queries, as they hold proportionally more
transitions to relabel. Windows are drawn without replacement (no query is asked twice).

Also here, shared by both methods:

- the frames a real LVLM sees (first, every ``frame_stride``-th and last observation of a
  segment, rendered by replay; only when the backend needs images);
- :class:`SegmentFacts`, the privileged ground truth of a segment, and the scripted
  annotator's *latent value* of a segment, from which both the ratings and the preferences of
  the scripted annotator are derived (so the two methods face the same, documented noise);
- the strict parsing of a ``<field>: value`` answer (:func:`answer_field`);
- the fields the two methods' config sections share (:class:`SegmentMethodConfig`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rgvlm import paths
from rgvlm.config import Config, param
from rgvlm.data.storage import OfflineDataset
from rgvlm.rewards.queries import Segment, episode_pngs, frame_indices, numbered_actions
from rgvlm.rewards.reward_model import RewardModelConfig
from rgvlm.vlm.parsing import MAX_ANSWER_CHARS
from rgvlm.vlm.scripted import ScriptedAnnotator, ScriptedNoise, SegmentTruth

# Misattribution moves a completion's credit by up to this many steps (see ScriptedAnnotator).
MISATTRIBUTION_REACH = 2


# -- sampling ---------------------------------------------------------------------------
def _window_counts(dataset: OfflineDataset, segment_length: int) -> np.ndarray:
    """Start positions per episode: ``length - segment_length + 1``, at least 1 (a short
    episode offers one segment, the whole episode)."""
    lengths = np.array([e["length"] for e in dataset.episodes], dtype=np.int64)
    return np.maximum(lengths - segment_length + 1, 1)


def _window(dataset: OfflineDataset, counts_cumsum: np.ndarray, flat: int, segment_length: int) -> Segment:
    episode = int(np.searchsorted(counts_cumsum, flat, side="right"))
    start = int(flat - (counts_cumsum[episode - 1] if episode else 0))
    return Segment(episode, start, min(start + segment_length, dataset.episodes[episode]["length"]))


def sample_segments(dataset: OfflineDataset, num_segments: int, segment_length: int, seed: int) -> list[Segment]:
    """``num_segments`` distinct windows (fewer if the dataset has fewer), uniform over all windows,
    sorted by (episode, start) so replay renders each episode once."""
    if segment_length < 1 or num_segments < 0:
        raise ValueError(f"segment_length={segment_length}, num_segments={num_segments}: expected >= 1 and >= 0")
    counts = _window_counts(dataset, segment_length)
    cumsum = np.cumsum(counts)
    total = int(cumsum[-1]) if cumsum.size else 0
    rng = np.random.default_rng([seed, 0x5E6])
    flat = rng.choice(total, size=min(num_segments, total), replace=False)
    return sorted(_window(dataset, cumsum, int(f), segment_length) for f in flat)


def sample_segment_pairs(dataset: OfflineDataset, num_pairs: int, segment_length: int,
                         seed: int) -> list[tuple[Segment, Segment]]:
    """``num_pairs`` pairs of distinct windows that share a mission (one goal in the prompt).

    The first window is uniform over all windows that have a partner (first windows are distinct);
    the second is uniform over the other windows of the episodes with the same mission, mostly
    the same episode, since most missions occur once. That compares segments under the same goal,
    as RL-VLM-F does (one task per query). Which one is shown as segment 0 is a coin flip, so a
    position bias of the LVLM cannot favour either kind.
    """
    if segment_length < 1 or num_pairs < 0:
        raise ValueError(f"segment_length={segment_length}, num_pairs={num_pairs}: expected >= 1 and >= 0")
    counts = _window_counts(dataset, segment_length)
    by_mission: dict[str, list[int]] = defaultdict(list)
    for index, episode in enumerate(dataset.episodes):
        by_mission[episode["mission"]].append(index)
    # Flat window ids of each mission group, and which groups offer two windows or more.
    group_of_episode = np.empty(len(dataset.episodes), dtype=np.int64)
    groups: list[np.ndarray] = []
    cumsum = np.cumsum(counts)
    starts = cumsum - counts
    for g, episodes in enumerate(by_mission.values()):
        group_of_episode[episodes] = g
        groups.append(np.concatenate([np.arange(starts[e], cumsum[e]) for e in episodes]))
    eligible = np.concatenate([ids for ids in groups if ids.size >= 2]) if groups else np.zeros(0, np.int64)
    rng = np.random.default_rng([seed, 0x9A1])
    firsts = rng.choice(eligible, size=min(num_pairs, eligible.size), replace=False) if eligible.size else []
    pairs = []
    for first in sorted(int(f) for f in firsts):
        episode = int(np.searchsorted(cumsum, first, side="right"))
        candidates = groups[group_of_episode[episode]]
        pick = int(rng.integers(candidates.size - 1))
        second = int(candidates[pick if candidates[pick] < first else pick + 1])  # every window but `first`
        a, b = _window(dataset, cumsum, first, segment_length), _window(dataset, cumsum, second, segment_length)
        pairs.append((b, a) if rng.random() < 0.5 else (a, b))
    return pairs


def segment_steps(dataset: OfflineDataset, segments: Sequence[Segment], length: int) -> tuple[np.ndarray, np.ndarray]:
    """Global transition indices of each segment, int64 ``[Q, length]`` (padded with the segment's
    first step), and the bool mask of the real ones."""
    steps = np.zeros((len(segments), length), dtype=np.int64)
    mask = np.zeros((len(segments), length), dtype=bool)
    for row, segment in enumerate(segments):
        if segment.length > length:
            raise ValueError(f"segment {segment} is longer than {length} steps")
        base = dataset.episodes[segment.episode]["step_start"] + segment.start
        steps[row] = base
        steps[row, : segment.length] = base + np.arange(segment.length)
        mask[row, : segment.length] = True
    return steps, mask


# -- frames and prompt text -------------------------------------------------------------
def segment_frames(dataset: OfflineDataset, segments: Sequence[Segment], frame_stride: int,
                   tile_size: int) -> list[tuple[bytes, ...]]:
    """PNG frames of each segment (first, every ``frame_stride``-th, last observation), rendered by
    replaying each episode once."""
    wanted: dict[int, set[int]] = defaultdict(set)
    for segment in segments:
        wanted[segment.episode].update(frame_indices(segment.start, segment.end, frame_stride))
    pngs: dict[tuple[int, int], bytes] = {}
    for episode, times in sorted(wanted.items()):
        order = sorted(times)
        for t, png in zip(order, episode_pngs(dataset, episode, order, tile_size), strict=True):
            pngs[(episode, t)] = png
    return [tuple(pngs[(s.episode, t)] for t in frame_indices(s.start, s.end, frame_stride)) for s in segments]


def actions_text(dataset: OfflineDataset, segment: Segment) -> str:
    """The segment's actions, numbered from 1."""
    base = dataset.episodes[segment.episode]["step_start"]
    return numbered_actions(dataset.actions[base + segment.start : base + segment.end])


# -- privileged ground truth (scripted annotator only) ----------------------------------
@dataclass(frozen=True)
class SegmentFacts:
    """What the scripted annotator may know about one segment (privileged, never a learner input).

    ``completed`` covers a *context* around the segment, ``offset`` steps before its first step
    and enough after its last, because credit can leak across the segment's edges: a completion
    just after the segment makes its last steps "approach" steps, and misattribution can move a
    completion's credit up to two steps either way.
    """

    completed: tuple[int, ...]  # sub-tasks completed by each step of the context
    offset: int  # context index of the segment's first step
    length: int  # steps in the segment
    completions: tuple[tuple[int, str], ...]  # (action number from 1, sub-task text) inside the segment

    def step_scores(self, rng: np.random.Generator, noise: ScriptedNoise) -> np.ndarray:
        """Per-step scores 0..10 of the segment before noise, exactly as the RG-VLM annotator
        would give them (:meth:`ScriptedAnnotator.clean_scores`: 10 on a completion, possibly
        misattributed; ``approach_score`` on the ``approach_steps`` steps before one;
        ``idle_score`` otherwise), computed on the context, then cut to the segment."""
        context = SegmentTruth(2, self.completed, (), ())
        return ScriptedAnnotator(noise).clean_scores(context, rng)[self.offset : self.offset + self.length]

    def latent_value(self, rng: np.random.Generator, noise: ScriptedNoise) -> float:
        """The annotator's noisy judgement of the segment, in *completions*:
        ``sum_t (s_t + e_t - idle_score) / (10 - idle_score)`` with ``s_t`` the per-step scores of
        :meth:`step_scores` and ``e_t ~ N(0, score_sd^2)`` independent per step.

        One completion is worth 1, each approach step ``(approach_score - idle) / (10 - idle)``
        (1/3 with the defaults: the three steps before a completion add up to one more), an idle
        step 0. The noise grows with the segment's length (sd ``score_sd * sqrt(L) / 9``, 0.44
        for 16 steps with ``score_sd`` 1), as judging a longer segment is harder.
        """
        scores = self.step_scores(rng, noise)
        noisy = scores + rng.normal(0.0, noise.score_sd, scores.size)
        return float(np.sum(noisy - noise.idle_score) / max(10.0 - noise.idle_score, 1.0))

    def describe(self) -> str:
        """A stage-1 analysis in words, from the exact ground truth (no noise, like RG-VLM's)."""
        lines = [f"Action {t} completes the sub-task '{text}'." for t, text in self.completions]
        ahead = self.completed[self.offset + self.length :]
        if not lines and any(ahead):
            lines.append("The last actions move the agent toward completing the next sub-task.")
        if not lines:
            lines.append("No action in this segment completes a sub-task or clearly moves toward one.")
        return " ".join(lines)


def segment_facts(dataset: OfflineDataset, segment: Segment, completed: np.ndarray,
                  noise_reach: int = MISATTRIBUTION_REACH, lookahead: int = 8) -> SegmentFacts:
    """The privileged facts of ``segment`` (``completed``: ``dataset.completed_per_step``).

    The context reaches ``noise_reach`` steps before the segment and ``max(noise_reach,
    lookahead)`` after it (``lookahead`` >= the annotator's ``approach_steps``), within the episode.
    """
    episode = dataset.episodes[segment.episode]
    base = episode["step_start"]
    lo = max(0, segment.start - noise_reach)
    hi = min(episode["length"], segment.end + max(noise_reach, lookahead))
    context = completed[base + lo : base + hi]
    progress = int(dataset.progress_before[base + segment.start])
    completions = []
    for t in range(segment.start, segment.end):
        for _ in range(int(completed[base + t])):
            text = episode["subtasks"][progress] if progress < len(episode["subtasks"]) else "the mission"
            completions.append((t - segment.start + 1, text))
            progress += 1
    return SegmentFacts(tuple(int(c) for c in context), segment.start - lo, segment.length, tuple(completions))


# -- strict parsing ---------------------------------------------------------------------
def clean_line(text: str) -> str:
    """A line without surrounding whitespace, markdown emphasis, quotes or a final period."""
    return text.strip().strip("*`'\" \t").rstrip(".").strip().strip("*`'\" \t")


def _same(value: str) -> str:
    return " ".join(value.lower().split())


def answer_field(text: Any, field: str) -> tuple[str | None, str, str]:
    """The value of the ``<field>: value`` line of an answer, or the whole answer when it is a
    single line without the field name. Returns (value or None, error when None, reason).

    Strict and total: an answer with no such line (prose around a bare value included) is
    ``unparseable``; several such lines that disagree (a fenced example before the answer, a
    prompt echo, a change of mind) are ``ambiguous``, never guessed between; lines that agree
    (case and spacing aside) count as one. Text that is not text, or longer than
    :data:`~rgvlm.vlm.parsing.MAX_ANSWER_CHARS`, is ``unparseable`` / ``too_long``."""
    if not isinstance(text, str):
        return None, "unparseable", f"the answer is a {type(text).__name__}, not text"
    if len(text) > MAX_ANSWER_CHARS:
        return None, "too_long", f"{len(text)} characters, more than {MAX_ANSWER_CHARS}"
    lines = [clean_line(line) for line in text.strip().splitlines() if clean_line(line)]
    prefix = field.lower() + ":"
    tagged = [clean_line(line[len(prefix):]) for line in lines if line.lower().startswith(prefix)]
    if tagged:
        values = list(dict.fromkeys(_same(value) for value in tagged))
        if len(values) > 1:
            # The reason is fed back in the re-ask prompt (part of its cache key): kept as it was.
            return None, "ambiguous", f"{len(tagged)} '{field}:' lines"
        return tagged[0], "", ""
    if len(lines) == 1:
        return lines[0], "", ""
    return None, "unparseable", f"no '{field}:' line"


# -- method configs (params.yaml sections erl_vlm and rl_vlm_f) -----------------------
@dataclass(frozen=True)
class SegmentMethodConfig(Config):
    """What ERL-VLM and RL-VLM-F share: how segments are drawn, shown and asked about, and how
    the reward model is trained. Each method's config derives it (and names its section)."""

    # Recorded in the provenance as given (an int stays an int), as before this base existed.
    FLOATS_AS_FLOAT = False

    num_queries: int = param(1000, low=1)  # segments rated, or pairs compared
    segment_length: int = param(16, low=1)  # transitions per segment
    frame_stride: int = param(4, low=1)  # every n-th observation of a segment is shown (and its last)
    tile_size: int = param(16, low=1)  # pixels per grid cell in the frames
    max_reasks: int = param(2, low=0)  # stage-2 re-asks after an answer the parser rejects; then the query is dropped
    seed: int = param(0, low=0)  # sampling, reward-model initialisation and minibatches
    ensemble_size: int = param(1, low=1)
    train_steps: int = param(400, low=0)
    batch_size: int = param(64, low=1)  # queries per gradient step
    lr: float = param(1e-3, above=0.0)
    feature_dim: int = param(64, low=1)
    hidden_dim: int = param(64, low=1)
    egocentric: bool = True
    num_threads: int = param(1, low=0)  # torch threads for the reward model; 0 = torch's default (see reward_model)
    stage1_max_new_tokens: int = param(512, low=1)
    stage2_max_new_tokens: int = param(32, low=1)
    prompt_dir: str = param(str(paths.PROMPTS), internal=True)

    def reward_model(self) -> RewardModelConfig:
        return RewardModelConfig(
            feature_dim=self.feature_dim, hidden_dim=self.hidden_dim, egocentric=self.egocentric,
            ensemble_size=self.ensemble_size, train_steps=self.train_steps, batch_size=self.batch_size,
            lr=self.lr, seed=self.seed, num_threads=self.num_threads)
