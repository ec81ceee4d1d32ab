"""The noise sweep (rgvlm/noise_sweep.py, the stage noise_sweep of optional/dvc.yaml): its statistics
on synthetic evaluations with a known answer, its params checked before any work, its place outside
the default `dvc repro`, the report's section from it, and the stage for real on the tiny profile."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from rgvlm import paths
from rgvlm.evaluation.paired import per_layout_table, records_from_per_layout
from rgvlm.noise_sweep import (
    LVLM_METHODS,
    NOISE_FREE,
    QUALITY_MEASURES,
    SweepSet,
    fit_relation,
    k_averaged,
    k_mean_difference,
    noise_sweep_config,
    paired_se,
    relation_figure,
    stage_sections,
    sweep_statistics,
    variance_components,
)
from rgvlm.params import ParamError, load_params, load_profile
from rgvlm.pipeline import OPTIONAL_DVC_YAML, load_stages

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = (1.0, 0.1)
LEVELS = (NOISE_FREE, DEFAULT, (2.0, 0.3), (4.0, 0.5))
#: Synthetic label quality per (method, level): two methods, quality falling with the noise.
QUALITY = {("a", lv): q for lv, q in zip(LEVELS, (0.60, 0.40, 0.25, 0.10), strict=True)}
QUALITY |= {("b", lv): q for lv, q in zip(LEVELS, (0.50, 0.30, 0.15, 0.05), strict=True)}


def synthetic(slope: float, intercept: float, seeds: int = 6, layouts: int = 60, ks=(1, 2, 3), seed: int = 0,
              seed_sd: float = 0.01, cell_sd: float = 0.05, fused_gain: float = 0.03):
    """Cells of a sweep whose (method, level) rows gain ``intercept + slope x quality`` over sparse
    (in expectation), and whose fusions gain ``fused_gain``: layouts shared by every row and k, a
    layout effect, a seed effect per run and cell noise. Returns (cells, sets, quality, roles)."""
    rng = np.random.default_rng(seed)
    sets = [SweepSet("sparse")]
    for method in ("a", "b"):
        for level in LEVELS:
            sets.append(SweepSet(method, method, level))
            if method == "a":
                sets.append(SweepSet("sparse+a@1", "a", level))
    layout_effect = rng.normal(0.0, 0.15, (len(ks), layouts))
    records = []
    for s in sets:
        gain = 0.0 if s.level is None else fused_gain if s.fused else intercept + slope * QUALITY[(s.method, s.level)]
        for run_seed in range(seeds):
            offset = rng.normal(0.0, seed_sd)
            for i, k in enumerate(ks):
                values = 0.5 + layout_effect[i] + gain + offset + rng.normal(0.0, cell_sd, layouts)
                records += [{"policy": "sampled", "reward_set": s.name, "split": "fresh", "k": k,
                             "seed": 2_000_000_000 + j, "run_seed": run_seed, "completion": v, "success": float(v > 0.6)}
                            for j, v in enumerate(values)]
    quality = [{"method": m, "score_sd": lv[0], "misattribution": lv[1], "spearman_progress": q,
                "auroc_completion": 0.5 + q / 2, "voc": q} for (m, lv), q in QUALITY.items()]
    roles = {lv: "noise-free" if lv == NOISE_FREE else "default" if lv == DEFAULT else "" for lv in LEVELS}
    return pd.DataFrame(records), sets, quality, roles


def test_the_fit_recovers_a_known_slope_and_its_crossing():
    cells, sets, _, _ = synthetic(slope=0.5, intercept=-0.15, seed_sd=0.002, cell_sd=0.01)
    tables = k_averaged(cells)
    x = {s.name: QUALITY[(s.method, s.level)] for s in sets if s.level is not None and not s.fused}
    fit = fit_relation(tables, x, samples=1000, seed=0)
    slope, crossing = fit["slope"], fit["crossing"]
    assert fit["points"] == 8 and abs(slope["estimate"] - 0.5) < 0.03 and slope["low"] <= 0.5 <= slope["high"]
    assert slope["low"] > 0 and abs(crossing["estimate"] - 0.3) < 0.02 and crossing["low"] <= 0.3 <= crossing["high"]
    assert crossing["note"] == "within the measured range"
    # The band is the fitted line with its interval, over the measured range of x.
    band = fit["band"]
    assert band["x"][0] == 0.05 and band["x"][-1] == 0.6
    assert all(lo <= f <= hi for lo, f, hi in zip(band["low"], band["fit"], band["high"], strict=True))
    # A line through data that do not move with x: the crossing is not claimed.
    flat = fit_relation(k_averaged(synthetic(slope=0.0, intercept=0.02, seed=1)[0]), x, samples=500, seed=0)
    assert flat["slope"]["low"] < 0 < flat["slope"]["high"] and flat["crossing"]["low"] is None
    assert "not resolved" in flat["crossing"]["note"]


def test_the_fit_interval_covers_the_true_slope_in_most_repetitions():
    covered = 0
    for rep in range(20):
        cells, sets, _, _ = synthetic(slope=0.2, intercept=-0.05, seeds=4, layouts=40, seed=100 + rep)
        x = {s.name: QUALITY[(s.method, s.level)] for s in sets if s.level is not None and not s.fused}
        slope = fit_relation(k_averaged(cells), x, samples=400, seed=rep)["slope"]
        covered += slope["low"] <= 0.2 <= slope["high"]
    assert covered >= 16, covered  # a 95% interval (the crossed bootstrap errs wide)


def test_gains_and_the_noise_effect_are_paired_means_over_k_decided_by_holm():
    cells, sets, quality, roles = synthetic(slope=0.5, intercept=-0.15, seed_sd=0.002, cell_sd=0.01)
    stats = sweep_statistics(cells, sets, quality, roles, samples=500, seed=0)
    means = cells.groupby("reward_set")["completion"].mean()  # equal cells per set: the mean over k and layouts
    gains = {(g["row"], g["level"]): g for g in stats["gains"]}
    assert len(gains) == len(sets) - 1 and stats["family"].endswith("15 tests, Holm at 5%")
    for s in sets[1:]:
        gain = gains[(s.row, s.record()["level"])]
        assert gain["difference"] == pytest.approx(means[s.name] - means["sparse"])
        assert gain["spearman_progress"] == QUALITY[(s.method, s.level)] and gain["ks"] == [1, 2, 3]
    # Method a's noise-free labels (quality .60) gain .15 over sparse, its default ones (.40) .05: a
    # resolved .10; its fusion gains .03 at every level: nothing to resolve.
    effects = {e["row"]: e for e in stats["noise_effect"]}
    assert effects["a"]["difference"] == pytest.approx(means["a~sd0~mis0"] - means["a~sd1~mis0.1"])
    assert abs(effects["a"]["difference"] - 0.10) < 0.01 and effects["a"]["verdict"] == "above"
    assert effects["sparse+a@1"]["verdict"] == "not resolved"
    assert gains[("a", "sd=4, mis=0.5")]["verdict"] == "below"  # .5 x .10 - .15 = -.10
    assert {g["kind"] for g in stats["gains_by_k"]} == {"row - sparse"} and len(stats["gains_by_k"]) == 3 * (len(sets) - 1)
    assert all(p >= q for p, q in zip((g["p_holm"] for g in stats["gains"]), (g["p"] for g in stats["gains"]), strict=True))
    # The fits (the methods' own rows only) on every quality measure, said in words for the report.
    assert set(stats["fits"]) == set(QUALITY_MEASURES) and stats["fits"]["spearman_progress"]["points"] == 8
    assert "the fitted gain is 0 at Spearman = 0.3" in stats["fits"]["spearman_progress"]["words"]
    # Every number again from the per-layout table as written and read back (6 significant digits).
    again = sweep_statistics(records_from_per_layout(per_layout_table(cells)), sets, quality, roles, 500, 0)
    for key in ("difference", "low", "high"):
        assert [g[key] for g in again["gains"]] == pytest.approx([g[key] for g in stats["gains"]], abs=1e-5)


def test_the_figure_draws_every_point_and_the_fit(tmp_path):
    cells, sets, quality, roles = synthetic(slope=0.5, intercept=-0.15)
    stats = sweep_statistics(cells, sets, quality, roles, samples=200, seed=0)
    from rgvlm.plots import save_figure

    fig = relation_figure(stats, "a synthetic sweep")
    assert len(fig.axes) == len(QUALITY_MEASURES)
    assert sum(len(ax.containers) for ax in fig.axes) == len(QUALITY_MEASURES) * (len(sets) - 1)  # error bars
    save_figure(fig, tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").stat().st_size > 0


def test_pairing_needs_the_same_layouts_and_seeds_at_every_k():
    cells, _, _, _ = synthetic(slope=0.1, intercept=0.0, layouts=10)
    moved = cells.assign(seed=np.where(cells["reward_set"] == "a~sd0~mis0", cells["seed"] + 1000, cells["seed"]))
    with pytest.raises(ValueError, match="different layouts"):
        k_mean_difference(k_averaged(moved), "a~sd0~mis0", "sparse", 100, 0)
    lost = cells[~((cells["reward_set"] == "sparse") & (cells["k"] == 2) & (cells["run_seed"] == 0))]
    with pytest.raises(ValueError, match="reward_set=sparse: the training seeds"):
        k_averaged(lost)


def test_variance_components_and_the_predicted_standard_error():
    rng = np.random.default_rng(0)
    n, m = 40, 400
    layout = rng.normal(0, 0.15, m)

    def table(seed_sd, cell_sd, shift):
        return layout + shift + rng.normal(0, seed_sd, (n, 1)) + rng.normal(0, cell_sd, (n, m))

    a, b = table(0.04, 0.12, 0.05), table(0.02, 0.1, 0.0)
    components = variance_components(a)
    assert components["seed"] == pytest.approx(0.04 ** 2, rel=0.5) and components["residual"] == pytest.approx(0.0144, rel=0.05)
    assert components["layout"] == pytest.approx(0.15 ** 2, rel=0.25)
    predicted = paired_se(a, b, seeds=8, layouts=100)
    truth = np.sqrt((0.04 ** 2 + 0.02 ** 2) / 8 + (0.12 ** 2 + 0.1 ** 2) / 800)  # the layout effects cancel
    assert predicted["se"] == pytest.approx(truth, rel=0.3) and predicted["layout_pair"] < 1e-3


# -- params -----------------------------------------------------------------------------------
def _sweep(**changes):
    return {**load_params(ROOT / "params.yaml")["noise_sweep"], **changes}


@pytest.mark.parametrize(("changes", "key", "expected"), [
    ({"levels": [[1, 0.1], [2, 0.3]]}, "noise_sweep.levels", "noise-free level [0, 0]"),
    ({"levels": [[0, 0], [1, 1.5]]}, "noise_sweep.levels[1][1]", "[0, 1]"),
    ({"levels": [[0, 0], [-1, 0.1]]}, "noise_sweep.levels[1][0]", ">= 0"),
    ({"methods": ["rg_vlm", "embedding"]}, "noise_sweep.methods[1]", "rg_vlm"),
    ({"methods": ["gvl"]}, "noise_sweep.fuse[0]", "one of noise_sweep.methods (gvl)"),
    ({"seeds": []}, "noise_sweep.seeds", "non-empty"),
    ({"temperature": -1}, "noise_sweep.temperature", ">= 0"),
    ({"split": "held_out"}, "noise_sweep.split", "seen, fresh"),
    ({"episodes": 3}, "noise_sweep.episodes", "one of the keys"),
])
def test_a_bad_noise_sweep_setting_is_named(changes, key, expected):
    with pytest.raises(ParamError) as error:
        noise_sweep_config(_sweep(**changes))
    assert error.value.key == key and expected in error.value.expected


def test_the_levels_must_hold_the_default_level_and_the_runner_says_so_before_any_work(tmp_path):
    from rgvlm.sections import check_params

    params = load_params(ROOT / "params.yaml")
    bad = {**params, "noise_sweep": _sweep(levels=[[0, 0], [2, 0.3]])}
    with pytest.raises(ParamError, match=r"noise_sweep.levels.*default level \[1.0, 0.1\]"):
        check_params(bad, ["noise_sweep", "labelling"])
    # The stage runner checks every section it injects before a kernel starts.
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    done = subprocess.run([sys.executable, "-m", "rgvlm.pipeline", "noise_sweep", "--params", str(tmp_path / "bad.yaml")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "noise_sweep.levels" in done.stderr and "default level" in done.stderr
    assert "Executing" not in done.stderr


# -- the stage's place ----------------------------------------------------------------------------
def test_the_stage_reads_every_lvlm_method_and_its_sections_are_the_notebooks():
    stage = load_stages()["noise_sweep"]
    params = load_params(ROOT / "params.yaml")
    config = noise_sweep_config(params["noise_sweep"])
    assert config.methods == LVLM_METHODS  # the default: every registered method that asks the LVLM
    assert NOISE_FREE in config.levels and (1.0, 0.1) in config.levels and len(config.levels) >= 3
    assert stage["params"] == list(stage_sections(noise_sweep_config({**params["noise_sweep"], "methods": LVLM_METHODS})))
    from tools.dvc_deps import notebook_source

    source = notebook_source(ROOT / "notebooks" / "07_noise_sweep.ipynb")
    assert all(f'{name} = load_params()["{name}"]' in source for name in stage["params"])


def test_no_default_stage_depends_on_the_sweep_so_dvc_repro_never_runs_it():
    """DVC joins a stage to another's outputs through any dep overlapping them: none of dvc.yaml's may."""
    sweep = load_stages(OPTIONAL_DVC_YAML)["noise_sweep"]
    outs = [str(next(iter(o)) if isinstance(o, dict) else o) for o in sweep["outs"]]
    assert "reports/tuning/noise_sweep.json" in outs and "noise_sweep" not in load_stages(paths.DVC_YAML)
    for name, stage in load_stages(paths.DVC_YAML).items():
        for dep in (str(next(iter(d)) if isinstance(d, dict) else d).rstrip("/") for d in stage.get("deps", [])):
            overlapping = [o for o in outs if o == dep or o.startswith(dep + "/") or dep.startswith(o + "/")]
            assert not overlapping, f"{name} depends on {dep}, an output of the noise sweep: dvc repro would run it"


def test_the_default_repro_plans_every_default_stage_and_not_the_sweep():
    """What `dvc repro` (no target: dvc.yaml) would run, as DVC plans it, upstream stages included."""
    from dvc.repo import Repo
    from dvc.repo.reproduce import collect_stages, get_active_graph, plan_repro

    with Repo(str(ROOT)) as repo:
        plan = plan_repro(get_active_graph(repo.index.graph), collect_stages(repo, ["dvc.yaml"]))
        planned = {getattr(stage, "name", None) or stage.addressing for stage in plan}
        everything = {getattr(stage, "name", None) or stage.addressing for stage in repo.index.stages}
    assert "noise_sweep" in everything and "noise_sweep" not in planned
    assert set(load_stages(paths.DVC_YAML)) <= planned


def test_the_report_shows_the_fit_the_verdicts_and_whose_runs_they_are(tmp_path):
    from rgvlm.report import build_report
    from rgvlm.rewards import fused_name

    cells, sets, quality, roles = synthetic(slope=0.5, intercept=-0.15, seed_sd=0.002, cell_sd=0.01)
    stats = sweep_statistics(cells, sets, quality, roles, samples=300, seed=0)
    sweep = {"levels": [{"level": f"sd={lv[0]:g}, mis={lv[1]:g}", "role": role} for lv, role in roles.items()],
             "params": {"noise_sweep": {"methods": ["a", "b"]}}, "training_seeds": list(range(6)),
             "iql_num_steps": 7500, "episodes_per_k": 60, "split": "fresh", "ks": [1, 2, 3],
             "policy": "sampled, temperature 0.5", **stats}
    out = tmp_path / "reports"
    shutil.copytree(ROOT / "reports" / "figures", out / "figures")
    (out / "tuning").mkdir()
    (out / "tuning" / "noise_sweep.json").write_text(json.dumps(sweep))
    report = load_params(ROOT / "params.yaml")["report"]
    page, markdown = build_report(ROOT / "reports" / "metrics", out, fused_name("rg_vlm", float(report["headline_lambda"])),
                                  report["split"], report["policy"])
    section = markdown[markdown.index("## Label noise -> policy"):]
    section = section[:section.index("\n## ", 1)]
    assert "The sweep's own runs, not the default run's" in section and "scripted annotator (not an LVLM)" in section
    assert "6 training seeds, 7,500 IQL updates per run, 60 fresh episodes per k, sampled, temperature 0.5 policy" in section
    crossing = stats["fits"]["spearman_progress"]["crossing"]
    assert f"0 at Spearman = {crossing['estimate']:.3f} [{crossing['low']:.3f}, {crossing['high']:.3f}]" in page
    assert "make noise-sweep" in section
    effect = next(e for e in stats["noise_effect"] if e["row"] == "a")
    assert f"{effect['difference']:+.3f} [{effect['low']:+.3f}, {effect['high']:+.3f}]" in page
    assert effect["verdict"] == "above" and "| above |" in section
    assert "](tuning/noise_sweep.png)" in section


# -- the stage, for real ----------------------------------------------------------------------------
@pytest.mark.slow
def test_the_stage_runs_on_the_tiny_profile_outside_the_default_repro(tmp_path):
    from tests.tiny_project import run, tiny_clone

    root = tmp_path / "rgvlm"
    root.mkdir()
    env = tiny_clone(root)
    ran = run(["dvc", "repro", "optional/dvc.yaml:noise_sweep"], root, env)
    assert [line for line in ran.stdout.splitlines() if line.startswith("Running stage")] == [
        "Running stage 'optional/dvc.yaml:noise_sweep':"]
    assert "up to date" in run(["dvc", "status", "optional/dvc.yaml"], root, env).stdout
    lock = yaml.safe_load((root / "optional" / "dvc.lock").read_text())["stages"]["noise_sweep"]
    tiny = load_profile("tiny")
    assert lock["params"]["params.yaml"]["noise_sweep"] == tiny["noise_sweep"]

    tuning = root / "reports" / "tuning"
    sweep = json.loads((tuning / "noise_sweep.json").read_text())
    config = noise_sweep_config(tiny["noise_sweep"])
    assert sweep["labels_by"].startswith("scripted annotator") and sweep["training_seeds"] == list(config.seeds)
    assert sweep["iql_num_steps"] == config.updates and sweep["ks"] == tiny["evaluation"]["ks"]
    rows = [*config.methods, *(f"sparse+{m}@{config.fusion_lambda:g}" for m in config.fuse)]
    assert {(g["row"], g["level"]) for g in sweep["gains"]} == {
        (r, f"sd={lv[0]:g}, mis={lv[1]:g}") for r in rows for lv in config.levels}
    assert {e["row"] for e in sweep["noise_effect"]} == set(rows)
    assert {q["method"] for q in sweep["label_quality"]} == set(config.methods)
    # Every run met the same layouts: the per-layout table holds every (set, k, layout) cell, and its
    # numbers are the JSON's.
    table = pd.read_csv(tuning / "noise_sweep_per_layout.csv")
    assert len(table) == len(sweep["reward_sets"]) * len(sweep["ks"]) * config.episodes_per_k
    assert set(table["num_seeds"]) == {len(config.seeds)}
    cells = records_from_per_layout(table)
    sets = [SweepSet(r["row"], r["method"], None if r["score_sd"] is None else (r["score_sd"], r["misattribution"]))
            for r in sweep["reward_sets"].values()]
    roles = {(lv["score_sd"], lv["misattribution"]): lv["role"] for lv in sweep["levels"]}
    again = sweep_statistics(cells, sets, sweep["label_quality"], roles, config.bootstrap_samples, tiny["evaluation"]["seed"])
    assert [g["difference"] for g in again["gains"]] == [g["difference"] for g in sweep["gains"]]
    assert (tuning / "noise_sweep.png").stat().st_size > 0 and (root / "reports/notebooks/07_noise_sweep.html").is_file()

    # What the report reads, rendered beside the committed metrics.
    from rgvlm.report import build_report

    out = tmp_path / "reports"
    shutil.copytree(ROOT / "reports" / "figures", out / "figures")
    shutil.copytree(tuning, out / "tuning")
    _, markdown = build_report(ROOT / "reports" / "metrics", out, "sparse+rg_vlm@1", "fresh", "sampled")
    assert "The sweep's own runs, not the default run's" in markdown and sweep["fits"]["voc"]["x_label"] in markdown
