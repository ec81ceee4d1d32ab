"""Paired statistics over evaluation layouts (issue 30; docs/statistics.md).

The unit is one evaluation record keyed by (policy, row, training seed, split, k, layout seed).
Every row and every training seed of the pipeline is rolled out on the *same* layouts (and the
six values of k share the fresh layout seeds), so a row's results form a crossed table
``Y[training seed, layout]``, and two rows measured on the same layouts are compared layout by
layout.

- **A row's mean** is the mean of ``Y`` (mean over training seeds of each seed's mean over
  layouts). Its 95% interval is a two-level percentile bootstrap for a crossed design (Owen's
  "pigeonhole" bootstrap): each resample draws the training seeds with replacement AND,
  independently, the layouts with replacement, and averages ``Y`` over the drawn pairs. It
  covers which seeds trained the policies and which layouts they met; it counts the
  seed x layout interaction twice, so it errs on the wide side. Episodes within a layout enter
  through their mean in the cell ``Y[seed, layout]``: the pipeline rolls out one episode per
  (run, policy, split, k, layout), so a cell is that episode's value (a sampled policy's action
  noise is inside it).
- **A difference** ``row - reference`` draws the layouts ONCE for both rows (paired by layout) and
  each row's training seeds independently (the rows were trained separately). Its two-sided
  p-value is the normal approximation with the bootstrap standard error (percentile p-values
  from B resamples cannot go below ~2/B, too coarse for Holm over a large family).
- **Decisions** over a family of differences use Holm's step-down correction at 5%
  (:func:`holm`); a difference is *resolved* when its Holm-adjusted p-value is below 0.05 AND its
  95% interval excludes 0, else "not resolved".

The per-layout table (:func:`per_layout_table`, committed as ``reports/metrics/per_layout.csv``)
holds every cell (one line per (policy, row, split, k, layout), the per-seed values in seed
order), so :func:`paired_differences` and :func:`summarize_cells` recompute every interval and
decision from it alone (:func:`records_from_per_layout`).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

#: Columns that name one cell of the evaluation (a crossed seeds x layouts table).
CELL_KEYS = ("policy", "reward_set", "split", "k")
#: The training seed and the layout (reset seed) of one record.
SEED, LAYOUT = "run_seed", "seed"
#: Per-record measures: proportion of sub-tasks completed, full-task success, sub-tasks done.
MEASURES = ("completion", "success", "subtasks")
LEVEL = 0.95
ALPHA = 0.05
#: The per-layout table's file name under reports/metrics/ (written by the evaluate stage).
PER_LAYOUT_FILE = "per_layout.csv"
#: The reference rows of the paired contrasts, and the dense reward the fusions are compared with.
SPARSE, BC, DENSE = "sparse", "bc", "rg_vlm"


def fusion_prefix(dense: str = DENSE) -> str:
    return f"sparse+{dense}@"


def _key_rng(seed: int, *key: object) -> np.random.Generator:
    """A generator fixed by ``key`` (not by the order cells are computed in): the same numbers
    whether a cell is computed in the pipeline or recomputed from the per-layout table."""
    return np.random.default_rng([seed, zlib.crc32(repr(tuple(str(k) for k in key)).encode())])


def with_subtasks(records: pd.DataFrame) -> pd.DataFrame:
    """``records`` with a ``subtasks`` column (sub-tasks done = completion x k) when it lacks one;
    rollout records carry it as ``progress``."""
    if "subtasks" in records:
        return records
    if "progress" in records:
        return records.assign(subtasks=records["progress"].astype(np.float64))
    return records.assign(subtasks=records["completion"].astype(np.float64) * records["k"].astype(np.float64))


def _numeric(records: pd.DataFrame) -> pd.DataFrame:
    """``records`` with ``subtasks`` (:func:`with_subtasks`) and success as 0/1 floats."""
    records = with_subtasks(records) if "completion" in records and "k" in records else records
    return records.assign(success=records["success"].astype(np.float64)) if "success" in records else records


def _require(records: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in records]
    if missing:
        raise ValueError(f"{what}: records lack column(s) {missing}; expected columns {sorted(columns)} "
                         f"(got {sorted(records.columns)})")


def cell_matrix(group: pd.DataFrame, measure: str, where: str = "cell") -> tuple[np.ndarray, list, list]:
    """``Y[training seed, layout]`` of one cell: the mean of ``measure`` over the cell's episodes
    on that (seed, layout); rows are training seeds, columns layouts, both sorted. Every seed must
    have met every layout (the crossed design), else a ValueError names what is missing."""
    table = group.pivot_table(index=SEED, columns=LAYOUT, values=measure, aggfunc="mean", sort=True)
    if table.isna().to_numpy().any():
        holes = [(int(s), int(layout)) for s, layout in zip(*np.nonzero(table.isna().to_numpy()), strict=True)]
        pairs = [(table.index[s], table.columns[layout]) for s, layout in holes[:5]]
        raise ValueError(f"{where}: not every training seed was evaluated on every layout (missing (run_seed, "
                         f"layout seed) pairs, first {len(pairs)} of {len(holes)}: {pairs}); the paired statistics "
                         "need the crossed design the pipeline evaluates (every run on the same layouts)")
    return table.to_numpy(np.float64), list(table.index), list(table.columns)


def _weights(rng: np.random.Generator, n: int, samples: int) -> np.ndarray:
    """Resampling weights ``[samples, n]``: how often each of ``n`` units is drawn, divided by n."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=samples).astype(np.float64) / n


def _resampled_means(values: np.ndarray, seed_weights: np.ndarray, layout_weights: np.ndarray) -> np.ndarray:
    """Mean of ``values[seeds*, layouts*]`` for every resample: ``w_seed^T Y w_layout``."""
    return np.einsum("bi,ij,bj->b", seed_weights, values, layout_weights)


def _percentiles(means: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1.0 - level) / 2.0
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1.0 - alpha))


def mean_interval(values: np.ndarray, samples: int, rng: np.random.Generator,
                  level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, low, high) of a crossed ``values[seeds, layouts]`` table: the two-level bootstrap
    over training seeds and layouts (module docstring)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f"values: expected a non-empty [training seeds, layouts] table, got shape {values.shape}")
    if samples < 1:
        raise ValueError(f"samples={samples}: expected at least 1 bootstrap resample")
    seeds, layouts = values.shape
    means = _resampled_means(values, _weights(rng, seeds, samples), _weights(rng, layouts, samples))
    return (float(values.mean()), *_percentiles(means, level))


@dataclass(frozen=True)
class Difference:
    difference: float
    low: float
    high: float
    se: float
    p: float


def normal_p(difference: float, se: float) -> float:
    """Two-sided p-value of ``difference`` against 0 with standard error ``se`` (normal approximation)."""
    if se <= 0.0:  # every resample gave the same difference: exact, and 0 only if it is 0
        return 1.0 if difference == 0.0 else 0.0
    return math.erfc(abs(difference) / se / math.sqrt(2.0))


def paired_difference(row: np.ndarray, reference: np.ndarray, samples: int, rng: np.random.Generator,
                      level: float = LEVEL) -> Difference:
    """``mean(row) - mean(reference)`` of two ``[seeds, layouts]`` tables on the same layouts (same
    columns, same order): the layouts are drawn once for both, each row's seeds independently."""
    row, reference = np.asarray(row, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if row.ndim != 2 or reference.ndim != 2 or row.shape[1] != reference.shape[1] or row.size == 0:
        raise ValueError(f"paired tables: expected [seeds, layouts] tables on the same layouts, got shapes "
                         f"{row.shape} and {reference.shape}")
    if samples < 2:
        raise ValueError(f"samples={samples}: expected at least 2 bootstrap resamples (a standard error)")
    layouts = _weights(rng, row.shape[1], samples)
    draws = (_resampled_means(row, _weights(rng, row.shape[0], samples), layouts)
             - _resampled_means(reference, _weights(rng, reference.shape[0], samples), layouts))
    difference = float(row.mean() - reference.mean())
    se = float(draws.std(ddof=1))
    return Difference(difference, *_percentiles(draws, level), se, normal_p(difference, se))


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control): the i-th smallest of m is
    multiplied by (m - i), made monotone, capped at 1."""
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1 or np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError(f"pvalues: expected a list of p-values in [0, 1], got {pvalues!r}")
    order = np.argsort(p, kind="stable")
    m = len(p)
    adjusted = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order])) if m else p
    out = np.empty(m)
    out[order] = adjusted
    return out


# -- tables ------------------------------------------------------------------------------
def summarize_cells(records: pd.DataFrame, samples: int = 2000, seed: int = 0,
                    measures: Sequence[str] = MEASURES, level: float = LEVEL) -> pd.DataFrame:
    """Per (policy,) row, split, k: the mean of each measure with its two-level (seeds x layouts)
    interval, and counts. ``records`` need the columns of :data:`CELL_KEYS` (``policy`` optional),
    ``run_seed``, ``seed`` (the layout) and ``measures``."""
    records = _numeric(records)
    keys = [c for c in CELL_KEYS if c in records]
    _require(records, [*keys, SEED, LAYOUT, *measures], "summarize_cells")
    out = []
    for key, group in records.groupby(keys, sort=True):
        row = dict(zip(keys, key, strict=True)) | {"k": int(key[-1])}
        where = " ".join(f"{k}={v}" for k, v in zip(keys, key, strict=True))
        for measure in measures:
            values, seeds, layouts = cell_matrix(group, measure, where)
            mean, low, high = mean_interval(values, samples, _key_rng(seed, *key, measure), level)
            row.update({f"{measure}_mean": mean, f"{measure}_low": low, f"{measure}_high": high})
        row.update({"num_seeds": len(seeds), "num_layouts": len(layouts), "num_episodes": len(group),
                    "interval": "seeds x layouts"})
        out.append(row)
    return pd.DataFrame(out)


def contrasts(rows: Iterable[str], dense: str = DENSE) -> list[tuple[str, str, str]]:
    """The paired contrasts the report tests, as (row, reference, kind): every row - ``sparse``,
    every row - ``bc`` (behaviour cloning on all data), and every ``sparse+<dense>@<lambda>`` -
    ``<dense>`` (fusion against the dense reward alone). A contrast is left out when its reference
    was not evaluated."""
    rows = list(dict.fromkeys(rows))
    out = [(r, SPARSE, "row - sparse") for r in rows if SPARSE in rows and r != SPARSE]
    out += [(r, BC, "row - bc") for r in rows if BC in rows and r != BC]
    if dense in rows:
        out += [(r, dense, f"fusion - {dense}") for r in rows if r.startswith(fusion_prefix(dense))]
    return out


def paired_differences(records: pd.DataFrame, samples: int = 2000, seed: int = 0, measure: str = "completion",
                       dense: str = DENSE, level: float = LEVEL) -> pd.DataFrame:
    """Every contrast of :func:`contrasts`, per (policy,) split and k, paired by layout: difference,
    95% interval, bootstrap standard error and unadjusted two-sided p-value (Holm is applied over
    the family a reader tests: :func:`decide`)."""
    records = _numeric(records)
    outer = [c for c in ("policy", "split", "k") if c in records]
    _require(records, [*outer, "reward_set", SEED, LAYOUT, measure], "paired_differences")
    out = []
    for key, group in records.groupby(outer, sort=True):
        cell = dict(zip(outer, key, strict=True)) | {"k": int(key[-1])}
        where = " ".join(f"{k}={v}" for k, v in cell.items())
        tables = {name: cell_matrix(g, measure, f"{where} reward_set={name}")
                  for name, g in group.groupby("reward_set", sort=True)}
        for row, reference, kind in contrasts(tables, dense):
            (a, _, layouts_a), (b, _, layouts_b) = tables[row], tables[reference]
            if layouts_a != layouts_b:
                raise ValueError(f"{where}: {row} and {reference} were evaluated on different layouts "
                                 f"({len(layouts_a)} and {len(layouts_b)} layout seeds, "
                                 f"{len(set(layouts_a) ^ set(layouts_b))} not shared); a paired difference needs "
                                 "the same layouts for both rows")
            d = paired_difference(a, b, samples, _key_rng(seed, *key, row, reference, measure), level)
            out.append(cell | {"row": row, "reference": reference, "kind": kind, "measure": measure,
                               "difference": d.difference, "low": d.low, "high": d.high, "se": d.se, "p": d.p,
                               "num_layouts": len(layouts_a), "seeds_row": a.shape[0], "seeds_reference": b.shape[0]})
    return pd.DataFrame(out)


def decide(family: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """``family`` (rows of :func:`paired_differences`: the tests one report makes) with Holm's
    adjusted p-value and a verdict per difference: "above" or "below" (resolved: Holm-adjusted p <
    ``alpha`` and the 95% interval excludes 0) or "not resolved"."""
    _require(family, ("difference", "low", "high", "p"), "decide")
    if family.empty:
        return family.assign(p_holm=pd.Series(dtype=float), verdict=pd.Series(dtype=str))
    adjusted = holm(family["p"].to_numpy())
    resolved = (adjusted < alpha) & ((family["low"] > 0) | (family["high"] < 0)).to_numpy()
    verdict = np.where(resolved, np.where(family["difference"] > 0, "above", "below"), "not resolved")
    return family.assign(p_holm=adjusted, verdict=verdict)


# -- the per-layout table ---------------------------------------------------------------------
PER_LAYOUT_COLUMNS = ("policy", "reward_set", "split", "k", "layout", "num_seeds", "completion", "success",
                      "subtasks", "run_seeds", "subtasks_by_seed", "success_by_seed")


def _joined(values: Iterable[float]) -> str:
    return ";".join(f"{v:.6g}" for v in values)


def per_layout_table(records: pd.DataFrame) -> pd.DataFrame:
    """One line per (policy, row, split, k, layout): the mean over training seeds of completion,
    success and sub-tasks done, and the per-seed values (``;``-joined in the order of ``run_seeds``)
    from which :func:`records_from_per_layout` rebuilds every cell."""
    records = with_subtasks(records)
    keys = [c for c in CELL_KEYS if c in records]
    _require(records, [*keys, SEED, LAYOUT, "completion", "success"], "per_layout_table")
    per_seed = (records.assign(success=records["success"].astype(np.float64))
                .groupby([*keys, LAYOUT, SEED], sort=True)[["completion", "success", "subtasks"]].mean().reset_index())
    out = []
    for key, group in per_seed.groupby([*keys, LAYOUT], sort=True):
        out.append(dict(zip([*keys, "layout"], key, strict=True)) | {
            "num_seeds": len(group), "completion": group["completion"].mean(), "success": group["success"].mean(),
            "subtasks": group["subtasks"].mean(), "run_seeds": _joined(group[SEED]),
            "subtasks_by_seed": _joined(group["subtasks"]), "success_by_seed": _joined(group["success"])})
    table = pd.DataFrame(out)
    return table[[c for c in PER_LAYOUT_COLUMNS if c in table]]


def records_from_per_layout(table: pd.DataFrame) -> pd.DataFrame:
    """The cells of a per-layout table (:func:`per_layout_table`, e.g. read back from
    ``reports/metrics/per_layout.csv``) as one record per (policy, row, split, k, layout, training
    seed): what :func:`summarize_cells` and :func:`paired_differences` read."""
    _require(table, ("reward_set", "split", "k", "layout", "run_seeds", "subtasks_by_seed", "success_by_seed"),
             "records_from_per_layout")
    keys = [c for c in CELL_KEYS if c in table]
    out = []
    for line in table.itertuples(index=False):
        seeds = str(line.run_seeds).split(";")
        subtasks, success = str(line.subtasks_by_seed).split(";"), str(line.success_by_seed).split(";")
        if not len(seeds) == len(subtasks) == len(success):
            raise ValueError(f"per-layout line {line}: run_seeds, subtasks_by_seed and success_by_seed must list "
                             "one value per training seed")
        for s, n, ok in zip(seeds, subtasks, success, strict=True):
            out.append({c: getattr(line, c) for c in keys} | {
                LAYOUT: int(line.layout), SEED: int(float(s)), "subtasks": float(n),
                "completion": float(n) / int(line.k), "success": float(ok)})
    return pd.DataFrame(out)
