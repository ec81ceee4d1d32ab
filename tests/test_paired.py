"""The paired estimator (rgvlm/evaluation/paired.py) on synthetic data with a known answer.

A synthetic evaluation: every layout j has a difficulty p_j shared by every row and training
seed (the pipeline's design: all runs meet the same layouts), a training seed moves its
run's success probability by a_i, and one episode per (seed, layout) is a Bernoulli draw.
The population mean of a row is known, so coverage can be counted, and a row that is better
by a known margin on the same layouts gives a difference the paired estimator must find.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rgvlm.evaluation import bootstrap_interval, summarize
from rgvlm.evaluation.paired import (
    contrasts,
    decide,
    holm,
    mean_interval,
    paired_difference,
    paired_differences,
    per_layout_table,
    records_from_per_layout,
    summarize_cells,
)

# Layout difficulties: a mixture of easy and hard layouts, the kind of spread the suite has.
EASY, HARD = 0.85, 0.10


def _layouts(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.where(rng.random(n) < 0.5, EASY, HARD)


def _draw(rng: np.random.Generator, layouts: np.ndarray, seeds: int, shift: float = 0.0,
          seed_sd: float = 0.03) -> np.ndarray:
    """One row's ``[seeds, layouts]`` 0/1 outcomes: layout difficulty + seed effect + shift."""
    p = np.clip(layouts[None, :] + shift + rng.normal(0.0, seed_sd, size=(seeds, 1)), 0.0, 1.0)
    return (rng.random(p.shape) < p).astype(np.float64)


def _records(tables: dict[str, np.ndarray], layouts: list[int], k: int = 1) -> pd.DataFrame:
    return pd.DataFrame([{"policy": "sampled", "reward_set": name, "split": "fresh", "k": k, "run_seed": s,
                          "seed": layout, "completion": y[s, j], "success": bool(y[s, j] == 1.0),
                          "progress": int(y[s, j] * k)}
                         for name, y in tables.items() for s in range(y.shape[0]) for j, layout in enumerate(layouts)])


def test_row_interval_covers_the_population_mean_about_95_percent():
    """200 evaluations (8 training seeds x 40 layouts each, all new); the population mean is
    0.5 * (EASY + HARD) (seed effects average 0). The seeds x layouts interval covers it in
    about 95% of them; the old within-seed episode bootstrap, which resamples each seed's layouts
    independently, leaves the shared layout variation out and covers it far less often."""
    rng = np.random.default_rng(1)
    truth = 0.5 * (EASY + HARD)
    new = old = 0
    draws = 200
    for _ in range(draws):
        y = _draw(rng, _layouts(rng, 40), seeds=8)
        _, low, high = mean_interval(y, 400, rng)
        new += low <= truth <= high
        old_low, old_high = bootstrap_interval(y, 400, rng)
        old += old_low <= truth <= old_high
    # Binomial(200, 0.95) lies in [0.91, 0.98] with 95% probability; the band is a little wider,
    # and the estimator errs wide by design (the interaction is counted twice).
    assert 0.90 <= new / draws <= 0.995, new / draws
    assert old / draws < 0.80, old / draws  # the layouts shared by all seeds are missing from it


def test_paired_difference_covers_the_true_difference():
    rng = np.random.default_rng(2)
    shift, draws, hits = 0.08, 200, 0
    for _ in range(draws):
        layouts = _layouts(rng, 40)
        d = paired_difference(_draw(rng, layouts, 3, shift), _draw(rng, layouts, 3), 400, rng)
        # The true difference: the shift, less what clipping at 1 takes from easy layouts.
        truth = 0.5 * (min(EASY + shift, 1.0) - EASY) + 0.5 * shift
        hits += d.low <= truth <= d.high
    assert 0.90 <= hits / draws <= 0.995, hits / draws


def test_a_shared_layout_effect_resolved_only_by_the_paired_difference():
    """Layouts are nearly all-or-nothing (solved with probability 0.02 or 0.98, as a grid world's
    layouts tend to be), and row A also solves 17% more of the hard ones: +0.085 in all, on the
    same 100 layouts and 3 seeds per row. Unpaired, each row's interval carries the spread
    between easy and hard layouts and the two rarely separate; paired by layout that spread
    cancels and the difference is resolved (Holm over the one test) in most of 40 evaluations."""
    rng = np.random.default_rng(3)
    draws, old_separated, paired_resolved, covered = 40, 0, 0, 0
    for _ in range(draws):
        layouts = np.where(rng.random(100) < 0.5, 0.98, 0.02)
        a = _draw(rng, layouts + 0.17 * (layouts < 0.5), 3, seed_sd=0.0)
        b = _draw(rng, layouts, 3, seed_sd=0.0)
        records = _records({"a": a, "sparse": b}, list(range(100)))
        # The old estimator: no layout column, each seed's episodes resampled on their own.
        old = summarize(records.drop(columns="seed"), samples=500).set_index("reward_set")
        old_separated += old.loc["a", "completion_low"] > old.loc["sparse", "completion_high"]
        paired = decide(paired_differences(records, samples=500, seed=int(rng.integers(1 << 30))))
        assert list(paired["row"]) == ["a"] and list(paired["reference"]) == ["sparse"]
        paired_resolved += paired.iloc[0]["verdict"] == "above"
        covered += paired.iloc[0]["low"] <= 0.085 <= paired.iloc[0]["high"]
    assert old_separated / draws <= 0.35, old_separated / draws
    assert paired_resolved / draws >= 0.70, paired_resolved / draws
    assert covered / draws >= 0.85, covered / draws


def test_no_difference_is_not_resolved():
    rng = np.random.default_rng(4)
    layouts = _layouts(rng, 60)
    records = _records({"a": _draw(rng, layouts, 3), "sparse": _draw(rng, layouts, 3)}, list(range(60)))
    decided = decide(paired_differences(records, samples=1000))
    row = decided.iloc[0]
    assert row["low"] < 0.0 < row["high"] and row["verdict"] == "not resolved"


def test_holm_hand_checked():
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    # Sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 -> 0.02, 0.03, 0.06, 0.04 -> monotone 0.06, 0.06.
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert list(holm([])) == []
    with pytest.raises(ValueError, match="p-values in \\[0, 1\\]"):
        holm([0.5, 1.5])


def test_holm_changes_a_decision():
    """Three differences each at p ~ 0.02: alone each would be resolved; Holm over the three is not."""
    family = pd.DataFrame({"difference": [0.1, 0.1, 0.1], "low": [0.01] * 3, "high": [0.2] * 3,
                           "p": [0.02, 0.021, 0.022]})
    assert list(decide(family)["verdict"]) == ["not resolved"] * 3
    assert list(decide(family.iloc[:1])["verdict"]) == ["above"]


def test_contrasts_are_the_reports_family():
    rows = ["sparse", "bc", "rg_vlm", "sparse+rg_vlm@0.5", "sparse+rg_vlm@1", "oracle"]
    found = contrasts(rows)
    assert ("oracle", "sparse", "row - sparse") in found and ("sparse", "bc", "row - bc") in found
    assert ("sparse+rg_vlm@1", "rg_vlm", "fusion - rg_vlm") in found
    assert not any(row == ref for row, ref, _ in found)
    assert len(found) == 5 + 5 + 2
    assert contrasts(["rg_vlm", "oracle"]) == []  # no reference evaluated: no contrast


def test_per_layout_table_round_trips_to_the_same_numbers(tmp_path):
    """The committed per-layout table is enough to recompute every interval and difference."""
    rng = np.random.default_rng(5)
    layouts = _layouts(rng, 12)
    ids = [2_000_000_000 + i for i in range(12)]
    records = pd.concat([_records({"sparse": _draw(rng, layouts, 2), "oracle": _draw(rng, layouts, 2)}, ids, k=k)
                         .assign(completion=lambda f: f["progress"] / f["k"]) for k in (1, 2)], ignore_index=True)
    table = per_layout_table(records)
    assert len(table) == 2 * 2 * 12 and set(table["num_seeds"]) == {2}
    path = tmp_path / "per_layout.csv"
    table.to_csv(path, index=False)
    back = records_from_per_layout(pd.read_csv(path))
    pd.testing.assert_frame_equal(summarize_cells(back, 300), summarize_cells(records, 300), check_like=True)
    pd.testing.assert_frame_equal(paired_differences(back, 300), paired_differences(records, 300))


def test_summarize_uses_layouts_when_records_name_them():
    rng = np.random.default_rng(6)
    layouts = _layouts(rng, 30)
    records = _records({"sparse": _draw(rng, layouts, 3)}, list(range(30)))
    summary = summarize(records, samples=500)
    row = summary.iloc[0]
    assert row["interval"] == "seeds x layouts" and row["num_layouts"] == 30 and row["num_episodes"] == 90
    assert row["completion_mean"] == pytest.approx(records["completion"].mean())
    assert row["subtasks_mean"] == pytest.approx(records["progress"].mean())


def test_bad_input_is_a_clear_error():
    records = _records({"sparse": np.ones((2, 3)), "a": np.ones((2, 3))}, [10, 11, 12])
    with pytest.raises(ValueError, match=r"missing \(run_seed, layout seed\) pairs"):
        summarize_cells(records.iloc[1:], 10)
    shifted = records.assign(seed=np.where(records["reward_set"] == "a", records["seed"] + 100, records["seed"]))
    with pytest.raises(ValueError, match="different layouts"):
        paired_differences(shifted, 10)
    with pytest.raises(ValueError, match="lack column"):
        paired_differences(records.drop(columns="seed"), 10)
    with pytest.raises(ValueError, match="samples=1"):
        paired_difference(np.ones((2, 3)), np.ones((2, 3)), 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="same layouts"):
        paired_difference(np.ones((2, 3)), np.ones((2, 4)), 10, np.random.default_rng(0))
