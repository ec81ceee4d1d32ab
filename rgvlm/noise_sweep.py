"""The noise sweep: how good must an LVLM's labels be before they help? (issue 30, item 3)

The stage ``noise_sweep`` (``optional/dvc.yaml``, ``notebooks/07_noise_sweep.ipynb``; run it with
``make noise-sweep``) lies outside the default ``dvc repro``: on the CPU profile it trains several
times the default run's runs (docs/methods.md, "The noise sweep"). It reads the ``noise_sweep``
section (:class:`NoiseSweepConfig`), the shared LVLM backend section ``labelling``, the section of
every method it relabels with, ``train`` (the IQL settings) and ``evaluation`` (k, layout seed,
rollout workers), and:

1. **relabels** ``data/`` at each noise level of the **scripted annotator** (``score_sd``,
   ``misattribution``; NOT an LVLM: it answers from the privileged ground truth with that noise),
   with each method of ``noise_sweep.methods``, through the label stage's own code
   (:func:`rgvlm.rewards.label_stage.label_with`: the method's registry entry, its params section,
   a response cache per level and method under ``outputs/noise_sweep/lvlm_cache/``, the labels kept
   under ``outputs/noise_sweep/labels/``); measures the
   labels' quality (AUROC and Spearman against the privileged ground truth; VOC, which needs none);
   and fuses the labels of each method of ``noise_sweep.fuse`` with the sparse reward;
2. **trains** every (reward set, level) and ``sparse`` in one stack on the same seeds
   (:func:`rgvlm.rl.runs.train_runs`, the train stage's code: it resumes from the checkpoints in
   ``outputs/noise_sweep/models/``);
3. **evaluates** every run on the same layouts (:func:`rgvlm.evaluation.evaluate_policies`), so
   every gain is paired by layout;
4. writes the **per-layout table** ``reports/tuning/noise_sweep_per_layout.csv`` and computes every
   statistic from it as read back (:func:`sweep_statistics`; docs/statistics.md, "The noise
   sweep"): per (row, level) the completion gain over ``sparse`` (paired by layout, mean over k),
   each row's noise-free minus default-level difference (paired), Holm over those, and the fitted
   relation gain = a + b x label quality with a bootstrap band (:func:`fit_relation`);
5. draws **one figure** (:func:`relation_figure`) and writes ``reports/tuning/noise_sweep.json``,
   which the report stage reads.

The statistics reuse the primitives of :mod:`rgvlm.evaluation.paired` (cells, resampling weights,
keyed generators, Holm); what is new here is the mean over k of a crossed table and the refit of a
line per bootstrap resample.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rgvlm import paths
from rgvlm.config import Config, ParamError, param
from rgvlm.evaluation.paired import (
    LEVEL,
    _key_rng,
    _percentiles,
    _resampled_means,
    _weights,
    cell_matrix,
    decide,
    paired_difference,
    paired_differences,
    summarize_cells,
)
from rgvlm.params import SPLITS
from rgvlm.rewards.registry import LVLM_SECTION, METHODS, PAPER_METHOD

#: The methods the sweep may relabel with: every registered method that asks the LVLM.
LVLM_METHODS: tuple[str, ...] = tuple(name for name, method in METHODS.items() if method.uses_lvlm)
#: The reference row of every gain, trained in the same stack on the same seeds.
REFERENCE = "sparse"
NOISE_FREE = (0.0, 0.0)
#: Label-quality measures (keys of :func:`rgvlm.evaluation.label_quality.label_quality`), the
#: first the relation's headline x.
QUALITY_MEASURES = {"spearman_progress": "Spearman with ground-truth progress",
                    "auroc_completion": "AUROC (step completed a sub-task)", "voc": "VOC (expert episodes)"}
SHORT_NAMES = {"spearman_progress": "Spearman", "auroc_completion": "AUROC", "voc": "VOC"}
#: What the stage writes for the report (under reports/) and keeps for itself (under outputs/).
RESULT_DIR = paths.REPORTS / "tuning"
RESULT_JSON, FIGURE_PNG, PER_LAYOUT_CSV = "noise_sweep.json", "noise_sweep.png", "noise_sweep_per_layout.csv"
WORK_DIR = paths.OUTPUTS / "noise_sweep"
LABELS_BY = "scripted annotator (privileged ground truth + noise; not an LVLM)"
COMMAND = "make noise-sweep (dvc repro optional/dvc.yaml:noise_sweep)"


# -- the params section ------------------------------------------------------------------------
@dataclass(frozen=True)
class NoiseSweepConfig(Config):
    """The ``noise_sweep`` section of ``params.yaml``."""

    SECTION = "noise_sweep"
    #: [score_sd, misattribution] of the scripted annotator; must hold the noise-free [0, 0] and
    #: the committed default (``labelling.scripted``, checked with that section).
    levels: tuple[tuple[float, float], ...] = param(low=0.0, nonempty=True, unique=True)
    methods: tuple[str, ...] = param(choices=LVLM_METHODS, nonempty=True, unique=True)
    seeds: tuple[int, ...] = param(low=0, nonempty=True, unique=True)  # training seeds of every reward set
    episodes_per_k: int = param(low=1)  # evaluation layouts per k, the same for every run
    fuse: tuple[str, ...] = param((PAPER_METHOD,), unique=True)  # also trained as sparse + fusion_lambda x labels
    fusion_lambda: float = param(1.0, low=0.0)
    updates: int | None = param(None, low=1)  # IQL updates per run (null: train.num_steps)
    split: str = param("fresh", choices=SPLITS)
    temperature: float = param(0.5, low=0.0)  # of the evaluation policy (0 = greedy)
    bootstrap_samples: int = param(2000, low=100)

    def check(self) -> None:
        for i, (_, misattribution) in enumerate(self.levels):
            if misattribution > 1.0:
                raise ParamError(f"noise_sweep.levels[{i}][1]", misattribution, "a misattribution probability in [0, 1]")
        if NOISE_FREE not in self.levels:
            raise ParamError("noise_sweep.levels", [list(level) for level in self.levels],
                             "a list of [score_sd, misattribution] that includes the noise-free level [0, 0]")
        for i, name in enumerate(self.fuse):
            if name not in self.methods:
                raise ParamError(f"noise_sweep.fuse[{i}]", name, f"one of noise_sweep.methods ({', '.join(self.methods)})")

    @property
    def policy(self) -> str:
        return "greedy" if self.temperature == 0 else "sampled"

    def policy_words(self) -> str:
        return "greedy (argmax)" if self.temperature == 0 else f"sampled, temperature {self.temperature:g}"


def noise_sweep_config(raw: Any) -> NoiseSweepConfig:
    """Check the ``noise_sweep`` section (a bad value fails naming the key, before any work)."""
    return NoiseSweepConfig.from_section(raw)


def default_level(labelling: Any) -> tuple[float, float]:
    """The committed default noise (``labelling.scripted``'s score_sd and misattribution, the
    annotator's own defaults where unset) of a checked ``labelling`` config."""
    from rgvlm.vlm.scripted import ScriptedNoise

    scripted = labelling.scripted or {}
    return (float(scripted.get("score_sd", ScriptedNoise.score_sd)),
            float(scripted.get("misattribution", ScriptedNoise.misattribution)))


def check_levels_against_labelling(sweep: NoiseSweepConfig, labelling: Any) -> None:
    """The sweep's levels must hold the default level, the one its noise-free level is compared with."""
    level = default_level(labelling)
    if level not in sweep.levels:
        raise ParamError("noise_sweep.levels", [list(x) for x in sweep.levels],
                         f"a list that includes the default level {list(level)} (labelling.scripted: score_sd, "
                         "misattribution), which the noise-free level is compared with")


def stage_sections(config: NoiseSweepConfig) -> tuple[str, ...]:
    """The params sections a sweep with ``config`` reads."""
    return ("noise_sweep", LVLM_SECTION, *config.methods, "train", "evaluation")


# -- the reward sets ---------------------------------------------------------------------------
def level_words(level: tuple[float, float]) -> str:
    return f"sd={level[0]:g}, mis={level[1]:g}"


@dataclass(frozen=True)
class SweepSet:
    """One reward set of the stack: ``row`` (a method's labels, or ``sparse+<method>@<lambda>``,
    or ``sparse``) made at ``level`` (None for ``sparse``)."""

    row: str
    method: str | None = None
    level: tuple[float, float] | None = None

    @property
    def name(self) -> str:
        """The stack's name of the set (also its folder under outputs/noise_sweep/models/)."""
        return self.row if self.level is None else f"{self.row}~sd{self.level[0]:g}~mis{self.level[1]:g}"

    @property
    def fused(self) -> bool:
        return self.method is not None and self.row != self.method

    def record(self) -> dict[str, Any]:
        return {"row": self.row, "method": self.method, "fused": self.fused,
                "score_sd": None if self.level is None else self.level[0],
                "misattribution": None if self.level is None else self.level[1],
                "level": None if self.level is None else level_words(self.level)}


def level_roles(config: NoiseSweepConfig, default: tuple[float, float]) -> dict[tuple[float, float], str]:
    return {level: "noise-free" if level == NOISE_FREE else "default" if level == default else ""
            for level in config.levels}


def relabel(dataset, config: NoiseSweepConfig, sections: Mapping[str, Any], work_dir: Path
            ) -> tuple[dict[str, np.ndarray], list[SweepSet], list[dict]]:
    """Every (method, level) reward set, the fusions and ``sparse``: (name -> rewards, the sets in
    stack order, the label quality of each (method, level))."""
    from rgvlm.evaluation.label_quality import label_quality
    from rgvlm.params import labelling_config
    from rgvlm.rewards import fuse, fused_name, load_rewards, save_rewards, sparse_rewards
    from rgvlm.rewards.label_stage import label_with

    sparse = sparse_rewards(dataset)
    reference = SweepSet(REFERENCE)
    rewards, sets, quality = {reference.name: sparse.rewards}, [reference], []
    lvlm = dict(sections[LVLM_SECTION] or {})
    for level in config.levels:
        # The scripted annotator at this level, whatever the pipeline's backend: the sweep varies its noise.
        annotator = labelling_config({**lvlm, "backend": "scripted",
                                      "scripted": {**(lvlm.get("scripted") or {}), "score_sd": level[0],
                                                   "misattribution": level[1]}})
        folder = f"sd{level[0]:g}_mis{level[1]:g}"
        for name in config.methods:
            method = METHODS[name]
            out_dir = work_dir / "labels" / folder / name
            result = label_with(method, method.config_from_params(sections[name]), annotator, dataset,
                                work_dir / "lvlm_cache" / folder / name, out_dir)
            save_rewards(out_dir, result)  # as the label stage keeps them: rewards, provenance, cost
            labels = load_rewards(out_dir, name)  # as the rewards stage reads them (quantised)
            labelled = SweepSet(name, name, level)
            rewards[labelled.name] = labels.rewards
            sets.append(labelled)
            measured = label_quality(dataset, labels.rewards, labels.values)
            quality.append({"method": name, "level": level_words(level), "score_sd": level[0],
                            "misattribution": level[1], **measured,
                            "lvlm_calls": result.cost.get("lvlm_calls"), "cache_hits": result.cost.get("cache_hits")})
            if name in config.fuse:
                fused = SweepSet(fused_name(name, config.fusion_lambda), name, level)
                rewards[fused.name] = fuse(sparse, labels, config.fusion_lambda).rewards
                sets.append(fused)
    return rewards, sets, quality


def train_and_evaluate(dataset, rewards: Mapping[str, np.ndarray], config: NoiseSweepConfig, train: Any,
                       evaluation: Any, episodes: list, models_dir: Path) -> tuple[list[dict], list[dict], int]:
    """Every reward set x ``config.seeds`` trained in one stack (resuming finished runs from
    ``models_dir``), then rolled out on ``episodes``: (evaluation records, training log, updates)."""
    from rgvlm.config import replace_checked
    from rgvlm.evaluation import evaluate_policies
    from rgvlm.params import EnvConfig, resolve_device
    from rgvlm.rl.runs import train_runs
    from rgvlm.rl.training import iql_config_for, learner_missions

    iql = iql_config_for(dataset, train.iql if config.updates is None
                         else replace_checked(train.iql, num_steps=config.updates))
    mission_table, observation_missions = learner_missions(dataset, iql)
    log = train_runs(dataset, mission_table, dict(rewards), list(config.seeds), iql, resolve_device(train.device),
                     models_dir, compile=train.compile, cuda_graphs=train.cuda_graphs,
                     observation_missions=observation_missions)
    runs = [(name, seed) for name in rewards for seed in config.seeds]
    records = evaluate_policies(models_dir, runs, episodes, EnvConfig(**dataset.manifest["env"]),
                                {config.policy: config.temperature}, evaluation.seed,
                                resolve_device(evaluation.device), evaluation.workers)
    return records, log, iql.num_steps


# -- statistics ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class KTable:
    """One reward set's crossed table averaged over k: ``values[training seed, layout]`` is the
    mean over k of the seed's cell on the layout (on the fresh split the same layout seed at every
    k; on the seen split, the i-th layout of each k); ``layouts``: (k, layout seeds) per k."""

    values: np.ndarray
    seeds: tuple
    layouts: tuple[tuple[int, tuple], ...]


def k_averaged(cells: pd.DataFrame, measure: str = "completion") -> dict[str, KTable]:
    """Per reward set, its :class:`KTable` of ``measure``. ``cells`` (one policy and split) need
    the columns of :func:`rgvlm.evaluation.paired.summarize_cells`; every seed of a set must have
    met every layout at every k, and each k as many layouts."""
    for column in ("policy", "split"):
        if column in cells and cells[column].nunique() > 1:
            raise ValueError(f"k_averaged: cells of several {column}s ({sorted(cells[column].unique())}); "
                             "expected one policy and split")
    tables = {}
    for name, group in cells.groupby("reward_set", sort=True):
        per_k = [(int(k), *cell_matrix(g, measure, f"reward_set={name} k={k}")) for k, g in group.groupby("k", sort=True)]
        seeds, counts = {tuple(s) for _, _, s, _ in per_k}, {len(layouts) for _, _, _, layouts in per_k}
        if len(seeds) != 1 or len(counts) != 1:
            raise ValueError(f"reward_set={name}: the training seeds or the number of layouts differ between the k "
                             f"({sorted(seeds)}, {sorted(counts)} layouts); a mean over k needs the same at every k")
        tables[str(name)] = KTable(np.mean([values for _, values, _, _ in per_k], axis=0), seeds.pop(),
                                   tuple((k, tuple(layouts)) for k, _, _, layouts in per_k))
    return tables


def _paired(tables: Mapping[str, KTable], row: str, reference: str) -> tuple[KTable, KTable]:
    for name in (row, reference):
        if name not in tables:
            raise ValueError(f"no evaluation of the reward set {name!r} (evaluated: {', '.join(tables)})")
    a, b = tables[row], tables[reference]
    if a.layouts != b.layouts:
        raise ValueError(f"{row} and {reference} were evaluated on different layouts or k; a paired difference "
                         "needs the same layouts for both")
    return a, b


def k_mean_difference(tables: Mapping[str, KTable], row: str, reference: str, samples: int, seed: int,
                      level: float = LEVEL) -> dict[str, Any]:
    """``row - reference`` of the means over k, paired by layout: the layouts drawn once for both
    (and for every k at once), each row's training seeds on their own
    (:func:`rgvlm.evaluation.paired.paired_difference`)."""
    a, b = _paired(tables, row, reference)
    d = paired_difference(a.values, b.values, samples, _key_rng(seed, "k-mean", row, reference), level)
    return {"row": row, "reference": reference, "difference": d.difference, "low": d.low, "high": d.high,
            "se": d.se, "p": d.p, "num_layouts": a.values.shape[1], "ks": [k for k, _ in a.layouts],
            "seeds_row": a.values.shape[0], "seeds_reference": b.values.shape[0]}


def _ols(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares (slope, intercept) of ``y[..., points]`` on ``x[points]``."""
    centred = x - x.mean()
    slope = (y - y.mean(axis=-1, keepdims=True)) @ centred / (centred @ centred)
    return slope, y.mean(axis=-1) - slope * x.mean()


def _estimate(value: float, draws: np.ndarray, level: float) -> dict[str, float]:
    low, high = _percentiles(draws, level)
    return {"estimate": float(value), "low": low, "high": high}


def fit_relation(tables: Mapping[str, KTable], x: Mapping[str, float], reference: str = REFERENCE,
                 samples: int = 2000, seed: int = 0, level: float = LEVEL, grid: int = 41) -> dict[str, Any]:
    """The least-squares line gain = intercept + slope * x through one point per reward set of
    ``x`` (name -> its label quality; NaN points are left out), where a point's gain is its mean
    over k minus ``reference``'s. The 95% intervals and the band come from a bootstrap that refits
    the line on every resample: the layouts drawn once for every row (the pairing), each row's
    training seeds on their own, the reference's once for all the gains of a resample. x is fixed
    (label quality is measured once, on the whole dataset). The crossing (the x where the fitted
    gain is 0) gets an interval only when the slope's excludes 0."""
    names = [name for name, value in x.items() if value is not None and math.isfinite(value)]
    out: dict[str, Any] = {"points": len(names), "left_out": [n for n in x if n not in names], "bootstrap_samples": samples,
                           "interval": "bootstrap over layouts (shared by every row) and each row's training seeds; "
                                       "refit per resample"}
    xs = np.array([x[name] for name in names], dtype=np.float64)
    if len(names) < 3 or np.ptp(xs) == 0.0:
        return out | {"note": "fewer than 3 points with a label quality, or one value of it: no line is fitted"}
    ref = tables[reference]
    rows = [_paired(tables, name, reference)[0] for name in names]
    rng = _key_rng(seed, "fit", reference, *names)
    layouts = _weights(rng, ref.values.shape[1], samples)
    ref_draws = _resampled_means(ref.values, _weights(rng, ref.values.shape[0], samples), layouts)
    gains = np.stack([_resampled_means(r.values, _weights(rng, r.values.shape[0], samples), layouts) - ref_draws
                      for r in rows], axis=1)  # [samples, points]
    observed = np.array([r.values.mean() - ref.values.mean() for r in rows])
    slope, intercept = (float(v) for v in _ols(xs, observed))
    slopes, intercepts = _ols(xs, gains)
    residual = observed - (intercept + slope * xs)
    out |= {"slope": _estimate(slope, slopes, level), "intercept": _estimate(intercept, intercepts, level),
            "r2": float(1.0 - residual @ residual / ((observed - observed.mean()) @ (observed - observed.mean())))
            if np.ptp(observed) > 0 else None,
            "x_range": [float(xs.min()), float(xs.max())],
            "data": [{"reward_set": n, "x": float(v), "gain": float(g)} for n, v, g in zip(names, xs, observed, strict=True)]}
    low, high = out["slope"]["low"], out["slope"]["high"]
    crossing: dict[str, Any] = {"estimate": -intercept / slope if slope != 0 else None}
    if low > 0 or high < 0:
        crossing |= dict(zip(("low", "high"), _percentiles(-intercepts / slopes, level), strict=True))
        crossing["note"] = "within the measured range" if xs.min() <= crossing["estimate"] <= xs.max() else \
            "outside the measured range of label quality (an extrapolation)"
    else:
        crossing |= {"low": None, "high": None,
                     "note": "not resolved: the slope's 95% interval includes 0, so no label quality is shown to turn "
                             "the gain's sign"}
    out["crossing"] = crossing
    band_x = np.linspace(xs.min(), xs.max(), grid)
    band = intercepts[:, None] + slopes[:, None] * band_x[None, :]
    alpha = (1.0 - level) / 2.0
    out["band"] = {"x": band_x.tolist(), "fit": (intercept + slope * band_x).tolist(),
                   "low": np.quantile(band, alpha, axis=0).tolist(), "high": np.quantile(band, 1 - alpha, axis=0).tolist()}
    return out


def sweep_statistics(cells: pd.DataFrame, sets: Sequence[SweepSet], quality: Sequence[Mapping[str, Any]],
                     roles: Mapping[tuple[float, float], str], samples: int, seed: int,
                     measure: str = "completion") -> dict[str, Any]:
    """Everything the sweep reports, from its cells (the per-layout table read back):

    - ``gains``: per (row, level) the gain over ``sparse`` of the mean over k, paired by layout;
    - ``noise_effect``: per row, the noise-free level minus the default level, paired by layout;
    - both decided together by Holm (the *family*), a verdict per difference;
    - ``gains_by_k``: the gains per k (:func:`rgvlm.evaluation.paired.paired_differences`), with
      Holm over that second family;
    - ``fits``: :func:`fit_relation` of the methods' own rows (not the fusions) on each label-quality
      measure;
    - ``summary``: each reward set's mean per k with its seeds x layouts interval."""
    tables = k_averaged(cells, measure)
    by_name = {s.name: s for s in sets}
    quality_of = {(q["method"], (float(q["score_sd"]), float(q["misattribution"]))): q for q in quality}
    labelled = [s for s in sets if s.level is not None]
    gains = [k_mean_difference(tables, s.name, REFERENCE, samples, seed, LEVEL) | s.record() | {"kind": "gain over sparse"}
             for s in labelled]
    for gain, s in zip(gains, labelled, strict=True):
        gain.update({key: quality_of[(s.method, s.level)][key] for key in QUALITY_MEASURES})
    noise_free = next((lv for lv, role in roles.items() if role == "noise-free"), None)
    default = next((lv for lv, role in roles.items() if role == "default"), None)
    effects = []
    if noise_free is not None and default is not None:
        for row in dict.fromkeys(s.row for s in labelled):
            method = next(s.method for s in labelled if s.row == row)
            a, b = SweepSet(row, method, noise_free), SweepSet(row, method, default)
            effects.append(k_mean_difference(tables, a.name, b.name, samples, seed, LEVEL)
                           | {"row": row, "method": method, "kind": "noise-free - default",
                              "level": f"{level_words(noise_free)} - {level_words(default)}"})
    family = decide(pd.DataFrame(gains + effects))
    by_k = paired_differences(cells, samples=samples, seed=seed, measure=measure)
    by_k = by_k[by_k["reference"] == REFERENCE].reset_index(drop=True)
    by_k = decide(by_k.assign(**{c: [by_name[r].record()[c] for r in by_k["row"]] for c in ("row", "level")}
                              | {"reward_set": by_k["row"]}))
    points = {s.name: s for s in labelled if not s.fused}
    fits = {key: fit_relation(tables, {n: quality_of[(s.method, s.level)][key] for n, s in points.items()},
                              REFERENCE, samples, seed) | {"x": key, "x_label": label}
            for key, label in QUALITY_MEASURES.items()}
    for fit in fits.values():
        fit["words"] = fit_words(fit)  # what the report and the figure say
    summary = summarize_cells(cells, samples=samples, seed=seed)
    summary = summary.assign(**{c: [by_name[n].record()[c] for n in summary["reward_set"]] for c in ("row", "level")})
    return {"measure": measure,
            "family": f"every gain over sparse of the mean over k ({len(gains)}) and every noise-free - default "
                      f"difference ({len(effects)}): {len(family)} tests, Holm at 5%",
            "gains": family.iloc[:len(gains)].to_dict("records"),
            "noise_effect": family.iloc[len(gains):].to_dict("records"),
            "gains_by_k": by_k.to_dict("records"),
            "fits": fits, "summary": summary.to_dict("records")}


# -- sizing: how many seeds and layouts resolve a difference -------------------------------------
def variance_components(values: np.ndarray) -> dict[str, float]:
    """Method-of-moments variance components of a crossed ``values[seed, layout]`` table (two-way
    model without replication: seed + layout + residual, the residual holding the seed x layout
    interaction and a cell's episode noise); negative estimates are set to 0."""
    values = np.asarray(values, dtype=np.float64)
    n, m = values.shape
    if n < 2 or m < 2:
        raise ValueError(f"values: expected at least 2 seeds and 2 layouts, got shape {values.shape}")
    grand, seed_means, layout_means = values.mean(), values.mean(axis=1), values.mean(axis=0)
    residual = values - seed_means[:, None] - layout_means[None, :] + grand
    ms_seed = m * ((seed_means - grand) ** 2).sum() / (n - 1)
    ms_layout = n * ((layout_means - grand) ** 2).sum() / (m - 1)
    ms_residual = (residual ** 2).sum() / ((n - 1) * (m - 1))
    return {"seed": max(0.0, (ms_seed - ms_residual) / m), "layout": max(0.0, (ms_layout - ms_residual) / n),
            "residual": float(ms_residual), "seeds": n, "layouts": m}


def paired_se(a: np.ndarray, b: np.ndarray, seeds: int, layouts: int) -> dict[str, float]:
    """The standard error of a paired difference ``a - b`` (two crossed tables on the same
    layouts, each row's seeds independent) if each row had ``seeds`` training seeds and met
    ``layouts`` layouts, from the components measured on ``a`` and ``b``:
    ``se^2 = (s_a + s_b) / seeds + d / layouts + (e_a + e_b) / (seeds * layouts)``, with s the seed
    variances, e the residuals and d the variance of the layout effects' difference (what pairing
    leaves of the layouts)."""
    ca, cb = variance_components(a), variance_components(b)
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    spread = float(np.var(a.mean(axis=0) - b.mean(axis=0), ddof=1))
    pair = max(0.0, spread - ca["residual"] / ca["seeds"] - cb["residual"] / cb["seeds"])
    var = ((ca["seed"] + cb["seed"]) / seeds + pair / layouts + (ca["residual"] + cb["residual"]) / (seeds * layouts))
    return {"se": math.sqrt(var), "seed_a": ca["seed"], "seed_b": cb["seed"], "layout_pair": pair,
            "residual_a": ca["residual"], "residual_b": cb["residual"]}


# -- the figure ---------------------------------------------------------------------------------
LEVEL_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def relation_figure(statistics: Mapping[str, Any], title: str):
    """One figure, a panel per label-quality measure (the headline, Spearman, widest): each (row,
    level)'s gain over sparse (mean over k) with its 95% interval, a filled marker for a method's
    own labels and a hollow one for its fusion with sparse, the colour the method's, the marker the
    level's; the fitted line through the methods' own rows and its 95% bootstrap band."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from rgvlm.plots import row_styles, wrap

    gains = pd.DataFrame(statistics["gains"])
    methods = list(dict.fromkeys(gains["method"]))
    colours = {m: row_styles(methods)[m]["color"] for m in methods}
    levels = list(dict.fromkeys(gains["level"]))
    markers = {lv: LEVEL_MARKERS[i % len(LEVEL_MARKERS)] for i, lv in enumerate(levels)}
    fig, axes = plt.subplots(1, len(QUALITY_MEASURES), figsize=(16, 6.5), sharey=True, squeeze=False,
                             gridspec_kw={"width_ratios": [2] + [1] * (len(QUALITY_MEASURES) - 1)})
    for ax, (key, label) in zip(axes[0], QUALITY_MEASURES.items(), strict=True):
        fit = statistics["fits"][key]
        if "band" in fit:
            band = fit["band"]
            ax.fill_between(band["x"], band["low"], band["high"], color="#999999", alpha=0.25, linewidth=0)
            ax.plot(band["x"], band["fit"], color="#333333", linewidth=1.5)
        ax.set_title(wrap(fit["words"], 110 if ax is axes[0][0] else 52), fontsize="x-small", loc="left")
        for row in gains.itertuples(index=False):
            value = getattr(row, key)
            if value is None or not math.isfinite(value):
                continue
            colour = colours[row.method]
            ax.errorbar(value, row.difference, yerr=[[row.difference - row.low], [row.high - row.difference]],
                        fmt=markers[row.level], color=colour, mfc="none" if row.fused else colour, capsize=2,
                        markersize=6, elinewidth=0.8)
        ax.axhline(0.0, color="black", linewidth=0.6)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("completion gain over Sparse, paired by layout (mean over k)")
    handles = [Line2D([], [], color=colours[m], marker="o", linestyle="", label=m) for m in methods]
    handles += [Line2D([], [], color="#555555", marker=markers[lv], linestyle="", label=lv) for lv in levels]
    handles += [Line2D([], [], color="#555555", marker="o", mfc="none", linestyle="", label="hollow: sparse + lambda x labels"),
                Line2D([], [], color="#333333", label="least squares over the filled points, 95% bootstrap band")]
    fig.legend(handles=handles, fontsize="small", loc="lower center", ncol=min(len(handles), 6), frameon=False)
    fig.suptitle(wrap(title, 170), fontsize="medium")
    fig.tight_layout(rect=(0.0, 0.1, 1.0, 1.0))
    return fig


def fit_words(fit: Mapping[str, Any]) -> str:
    """The fitted relation in words: slope, intercept, crossing, each with its 95% interval."""
    if "slope" not in fit:
        return fit.get("note", "no fit")
    x = SHORT_NAMES.get(fit.get("x", ""), "x")
    s, i, c = fit["slope"], fit["intercept"], fit["crossing"]
    words = (f"gain = {i['estimate']:+.3f} [{i['low']:+.3f}, {i['high']:+.3f}] + {s['estimate']:.3f} "
             f"[{s['low']:.3f}, {s['high']:.3f}] x {x} ({fit['points']} points, R^2 {fit['r2']:.2f})"
             if fit.get("r2") is not None else
             f"gain = {i['estimate']:+.3f} + {s['estimate']:.3f} x {x} ({fit['points']} points)")
    if c.get("low") is not None:
        words += f"; the fitted gain is 0 at {x} = {c['estimate']:.3f} [{c['low']:.3f}, {c['high']:.3f}] ({c['note']})"
    else:
        words += f"; crossing {c['note']}"
    return words


def figure_title(config: NoiseSweepConfig, roles: Mapping[tuple[float, float], str], updates: int, ks: Sequence[int]) -> str:
    levels = ", ".join(f"{level_words(lv)}" + (f" ({role})" if role else "") for lv, role in roles.items())
    return (f"Completion gain over Sparse (paired by layout, mean over k = {', '.join(map(str, ks))}) against the labels' "
            f"quality. Labels: the scripted annotator (NOT an LVLM) at noise levels {levels}, relabelling with "
            f"{', '.join(config.methods)}; IQL, {len(config.seeds)} training seeds x {updates:,} updates per run, "
            f"{config.episodes_per_k} {config.split} layouts per k, {config.policy_words()} policy. Line: least "
            "squares over the filled points; band and intervals 95%, bootstrap over layouts and seeds.")


# -- the stage ----------------------------------------------------------------------------------
def run_sweep(sections: Mapping[str, Any], data_dir: Path = paths.DATA, out_dir: Path = RESULT_DIR,
              work_dir: Path = WORK_DIR) -> dict[str, Any]:
    """The stage (module docstring): ``sections`` are the params sections it reads
    (:func:`stage_sections`), checked first; writes ``out_dir/`` noise_sweep.json, .png and the
    per-layout CSV, and keeps caches, labels and models in ``work_dir``. Returns the JSON's record."""
    from rgvlm.data import load_dataset
    from rgvlm.atomic import write_bytes_atomic, write_json_atomic
    from rgvlm.evaluation import evaluation_episodes, per_layout_table, records_from_per_layout
    from rgvlm.plots import save_figure
    from rgvlm.sections import check_params

    started = time.perf_counter()
    config = noise_sweep_config(sections.get("noise_sweep"))
    checked = check_params(sections, stage_sections(config))  # every section and the levels against labelling
    train, evaluation = checked["train"], checked["evaluation"]
    roles = level_roles(config, default_level(checked[LVLM_SECTION]))
    dataset = load_dataset(data_dir)
    # The layouts first: a split without enough of them fails before any labelling or training.
    episodes = evaluation_episodes(dataset, evaluation.ks, (config.split,), config.episodes_per_k, evaluation.seed)
    rewards, sets, quality = relabel(dataset, config, sections, work_dir)
    records, log, updates = train_and_evaluate(dataset, rewards, config, train, evaluation, episodes,
                                               work_dir / "models")
    write_bytes_atomic(work_dir / "training.csv", pd.DataFrame(log).to_csv(index=False).encode())
    # Every statistic from the per-layout table as read back: what a reader recomputes is what is reported.
    out_dir.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out_dir / PER_LAYOUT_CSV, per_layout_table(pd.DataFrame(records)).to_csv(index=False).encode())
    cells = records_from_per_layout(pd.read_csv(out_dir / PER_LAYOUT_CSV))
    statistics = sweep_statistics(cells, sets, quality, roles, config.bootstrap_samples, evaluation.seed)
    title = figure_title(config, roles, updates, evaluation.ks)
    save_figure(relation_figure(statistics, title), out_dir / FIGURE_PNG)
    result = {
        "stage": "noise_sweep", "command": COMMAND, "labels_by": LABELS_BY,
        "params": {name: sections[name] for name in stage_sections(config)},  # what made it, as given
        "levels": [{"score_sd": lv[0], "misattribution": lv[1], "level": level_words(lv), "role": role}
                   for lv, role in roles.items()],
        "reward_sets": {s.name: s.record() for s in sets},
        # What the report states, so that the sweep's runs are never read as the default run's.
        "training_seeds": list(config.seeds), "iql_num_steps": updates, "episodes_per_k": config.episodes_per_k,
        "ks": list(evaluation.ks), "split": config.split, "policy": config.policy_words(),
        "lambda": config.fusion_lambda, "evaluation_seed": evaluation.seed, "bootstrap_samples": config.bootstrap_samples,
        "per_layout": f"reports/tuning/{PER_LAYOUT_CSV}", "figure_title": title,
        "label_quality": quality, **statistics,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json_atomic(out_dir / RESULT_JSON, result)
    return result
