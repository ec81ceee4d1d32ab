"""Which reset seeds each split uses: one home, so the splits can never overlap.

A seed fixes the layout, the objects and the mission, so disjoint seed ranges are
disjoint initial states:
- dataset layouts: ``dataset.seed * BLOCK + i`` (evaluation's "seen" split replays these);
- validation (for tuning): ``VALIDATION_OFFSET + ...``;
- fresh evaluation layouts, the paper's randomised initial states: ``FRESH_OFFSET + ...``.
"""

from __future__ import annotations

BLOCK = 1_000_000
MAX_BASE_SEED = 999
VALIDATION_OFFSET = 1_000_000_000
FRESH_OFFSET = 2_000_000_000


def _check(base_seed: int, index: int) -> None:
    if not 0 <= base_seed <= MAX_BASE_SEED:
        raise ValueError(f"seed={base_seed}: expected 0..{MAX_BASE_SEED}")
    if not 0 <= index < BLOCK:
        raise ValueError(f"episode index {index}: expected 0..{BLOCK - 1}")


def dataset_seed(base_seed: int, index: int) -> int:
    """Layout seed of the ``index``-th dataset episode (per k)."""
    _check(base_seed, index)
    return base_seed * BLOCK + index


def validation_seed(base_seed: int, index: int) -> int:
    """Layout seed of the ``index``-th validation episode (for tuning, never reported)."""
    _check(base_seed, index)
    return VALIDATION_OFFSET + base_seed * BLOCK + index


def fresh_seed(base_seed: int, index: int) -> int:
    """Layout seed of the ``index``-th fresh (randomised-initial-state) evaluation episode."""
    _check(base_seed, index)
    return FRESH_OFFSET + base_seed * BLOCK + index
