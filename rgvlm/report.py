"""The report a reader opens first: ``reports/index.html``.

Every number in it is read from the metrics files under ``reports/metrics/``; every
figure is a file under ``reports/figures/`` drawn from them. The title and a provenance
section say which reward methods, which LVLM backend and model, and which parameters
made the results. Rewards from the scripted annotator are labelled as such, never as
an LVLM's.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rgvlm import paths
from rgvlm.data.storage import write_bytes_atomic
from rgvlm.plots import METRIC_LABELS, SPLIT_TITLES, method_order
from rgvlm.rewards.registry import COMPARISON_METHODS, PAPER_METHOD


def lvlm_label(provenance: dict[str, Any]) -> str:
    """Who made a reward set's labels, in words."""
    lvlm = provenance.get("lvlm")
    if not lvlm:
        return "no LVLM"
    if lvlm.get("backend") == "scripted":
        return "scripted annotator (privileged ground truth + noise; not an LVLM)"
    return f"LVLM {lvlm.get('model')} via {lvlm.get('backend')}"


def provenance_title(methods: dict[str, dict[str, Any]]) -> str:
    """A one-line summary of where the rewards came from, for titles."""
    labels = sorted({lvlm_label(p) for p in methods.values()})
    return "rewards: " + ", ".join(method_order(list(methods))) + " | labels by: " + "; ".join(labels)


#: Rows that use no reward model: behaviour cloning in the same stack, and the d3rlpy peer library.
BASELINE_ROWS = ("bc", "bc_success", "d3rlpy_bc", "d3rlpy_cql")


def fusion_lambda(name: str, dense: str = "rg_vlm") -> float | None:
    """lambda of a reward set named ``sparse+<dense>@<lambda>`` (None for any other name)."""
    prefix = f"sparse+{dense}@"
    return float(name[len(prefix):]) if name.startswith(prefix) else None


def figure4_left_methods(methods: list[str], headline: str) -> list[str]:
    """Figure 4 left: Sparse, Sparse + RG-VLM (the headline lambda), RG-VLM alone, every
    comparison method, the baselines (BC, filtered BC, d3rlpy) and the oracle as the upper reference."""
    wanted = ["sparse", headline, PAPER_METHOD, *COMPARISON_METHODS, *BASELINE_ROWS, "oracle"]
    return [m for m in wanted if m in methods]


def figure4_right_methods(methods: list[str]) -> list[str]:
    """Figure 4 right, the fusion ablation: Sparse, RG-VLM alone and Sparse + RG-VLM for each lambda."""
    fusions = sorted((m for m in methods if fusion_lambda(m) is not None), key=fusion_lambda)
    return [m for m in ("sparse", "rg_vlm") if m in methods] + fusions


def _cell(summary: pd.DataFrame, method: str, split: str, k: int, metric: str) -> pd.Series | None:
    match = summary[(summary["method"] == method) & (summary["split"] == split) & (summary["k"] == k)]
    return None if match.empty else match.iloc[0]


def separated_above(summary: pd.DataFrame, upper: str, lower: str, split: str, metric: str = "completion") -> list[int]:
    """The k at which ``upper``'s 95% interval lies entirely above ``lower``'s."""
    out = []
    for k in sorted(summary["k"].unique()):
        a, b = _cell(summary, upper, split, k, metric), _cell(summary, lower, split, k, metric)
        if a is not None and b is not None and a[f"{metric}_low"] > b[f"{metric}_high"]:
            out.append(int(k))
    return out


def story(summary: pd.DataFrame, headline: str, split: str = "fresh", metric: str = "completion") -> list[str]:
    """The paper's two claims checked on these numbers, in sentences built from the metrics.

    0. The sanity check: can this run detect a dense reward's benefit at all? The oracle (a
       perfect dense reward) against Sparse, per k.
    1. Dense LVLM rewards help more as k grows: the gap RG-VLM minus Sparse, per k.
    2. Sparse + RG-VLM beats each alone: per k, whether its mean is above both and whether
       the 95% intervals separate.
    Where intervals overlap the sentence says so ("not resolved"), never "better".
    """
    ks = [int(k) for k in sorted(summary["k"].unique())]
    have = set(summary["method"])
    lines = []
    if {"oracle", "sparse"} <= have:
        above = separated_above(summary, "oracle", "sparse", split, metric)
        below = separated_above(summary, "sparse", "oracle", split, metric)
        longer = [k for k in above if k >= 2]
        verdict = ("this run can detect a dense reward's benefit" if len(longer) >= 2 else
                   "not resolved: this run cannot reliably tell a perfect dense reward from Sparse, so no LVLM "
                   "reward's comparison with Sparse below can be read as a result")
        lines.append(f"Sanity check (the oracle, a perfect dense reward, against Sparse), {split} split, {metric}: "
                     f"the oracle's 95% interval lies above Sparse's at k in {above or 'none'} and below it at k "
                     f"in {below or 'none'}; {verdict}.")
    if {"rg_vlm", "sparse"} <= have:
        gaps = []
        for k in ks:
            a, b = _cell(summary, "rg_vlm", split, k, metric), _cell(summary, "sparse", split, k, metric)
            if a is not None and b is not None:
                gaps.append((k, a[f"{metric}_mean"] - b[f"{metric}_mean"]))
        if len(gaps) >= 2:
            slope = float(np.polyfit([k for k, _ in gaps], [g for _, g in gaps], 1)[0])
            grows = "grows" if slope > 0 else "does not grow"
            clear = [k for k, _ in gaps
                     if _cell(summary, "rg_vlm", split, k, metric)[f"{metric}_low"]
                     > _cell(summary, "sparse", split, k, metric)[f"{metric}_high"]]
            lines.append(
                f"Claim 1 (dense LVLM rewards help more as k grows), {split} split, {metric}: RG-VLM minus Sparse is "
                + ", ".join(f"{g:+.3f} at k={k}" for k, g in gaps)
                + f"; the least-squares slope over k is {slope:+.4f} per sub-task, so the mean advantage {grows} "
                f"with k here; RG-VLM's 95% interval lies above Sparse's at k in {clear or 'none'}"
                + ("" if clear else " (not resolved at any k)") + ".")
    if {headline, "rg_vlm", "sparse"} <= have:
        wins, separated = [], []
        for k in ks:
            cells = {m: _cell(summary, m, split, k, metric) for m in (headline, "rg_vlm", "sparse")}
            if any(c is None for c in cells.values()):
                continue
            fused = cells[headline]
            above = all(fused[f"{metric}_mean"] > cells[m][f"{metric}_mean"] for m in ("rg_vlm", "sparse"))
            clear = all(fused[f"{metric}_low"] > cells[m][f"{metric}_high"] for m in ("rg_vlm", "sparse"))
            wins.append((k, above))
            separated.append((k, clear))
        won = [k for k, above in wins if above]
        clear = [k for k, c in separated if c]
        lines.append(
            f"Claim 2 (Sparse + RG-VLM beats each alone), {headline}, {split} split, {metric}: its mean is above both "
            f"at k in {won or 'none'} of {[k for k, _ in wins]}; its 95% interval lies above both intervals at k in "
            f"{clear or 'none'}.")
    return lines


def cost_table(metrics_dir: Path) -> str:
    """One row per labelling stage: LVLM calls, tokens, cache hits, time and estimated cost."""
    keys = ["lvlm_calls", "cache_hits", "prompt_tokens", "completion_tokens", "reasks", "wall_time_s",
            "estimated_cost_usd"]
    rows = []
    for path in sorted(metrics_dir.glob("labeling_*.json")):
        record = json.loads(path.read_text())
        method = path.stem.removeprefix("labeling_")
        cost = record["cost"]
        rows.append(f"<tr><td>{html.escape(method)}</td><td>{html.escape(lvlm_label(record['provenance']))}</td>"
                    + "".join(f"<td>{cost.get(k, '-')}</td>" for k in keys) + "</tr>")
    if not rows:
        return ""
    return ("<table><tr><th>method</th><th>labels by</th>" + "".join(f"<th>{k}</th>" for k in keys) + "</tr>"
            + "".join(rows) + "</table>")


def critic_table(log: pd.DataFrame) -> str:
    """Per trained row: the critic diagnostic at the last probed update, mean [min, max] over seeds."""
    from rgvlm.rl.diagnostics import DIAGNOSTIC_NAMES

    names = [n for n in DIAGNOSTIC_NAMES if n in log]
    probed = log.dropna(subset=names) if names else log.iloc[0:0]
    if probed.empty:
        return "<p>No critic diagnostic was logged (train.holdout_fraction is 0).</p>"
    last = probed[probed["step"] == probed.groupby("method")["step"].transform("max")]
    rows = []
    for method in method_order(sorted(last["method"].unique())):
        group = last[last["method"] == method]
        cells = "".join(f"<td>{group[n].mean():.3f} [{group[n].min():.3f}, {group[n].max():.3f}]</td>" for n in names)
        rows.append(f"<tr><td>{html.escape(method)}</td><td>{int(group['step'].iloc[0])}</td><td>{len(group)}</td>"
                    f"{cells}</tr>")
    return ("<table><tr><th>row</th><th>update</th><th>seeds</th>" + "".join(f"<th>{n}</th>" for n in names)
            + "</tr>" + "".join(rows) + "</table>")


def _fmt_interval(mean: float, low: float, high: float) -> str:
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def results_table(summary: pd.DataFrame, metric: str) -> str:
    """HTML table: rows method x split, columns k; cells mean [95% interval]."""
    ks = sorted(summary["k"].unique())
    head = "".join(f"<th>k={k}</th>" for k in ks)
    rows = []
    for split in [s for s in SPLIT_TITLES if s in set(summary["split"])]:
        for method in method_order(sorted(summary["method"].unique())):
            cells = []
            for k in ks:
                match = summary[(summary["method"] == method) & (summary["split"] == split) & (summary["k"] == k)]
                if match.empty:
                    cells.append("<td>-</td>")
                    continue
                r = match.iloc[0]
                cells.append(f"<td>{_fmt_interval(r[f'{metric}_mean'], r[f'{metric}_low'], r[f'{metric}_high'])}</td>")
            rows.append(f"<tr><td>{html.escape(method)}</td><td>{split}</td>{''.join(cells)}</tr>")
    return f"<table><tr><th>reward</th><th>split</th>{head}</tr>{''.join(rows)}</table>"


def _json_block(obj: Any) -> str:
    return f"<pre>{html.escape(json.dumps(obj, indent=1, sort_keys=True))}</pre>"


def _card_table(card: dict[str, Any]) -> str:
    frame = pd.DataFrame(card["per_k"])
    columns = ["k", "episodes", "transitions", "mean_length", "success_rate", "mean_completion",
               "share_expert", "share_noisy", "share_partial", "success_expert", "success_noisy", "success_partial"]
    return frame[[c for c in columns if c in frame]].to_html(index=False, border=0)


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1.5em; }
td, th { border: 1px solid #ccc; padding: 3px 6px; text-align: right; }
td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; }
pre { background: #f6f6f6; padding: 0.6em; font-size: 0.8em; overflow-x: auto; }
.note { background: #fff6d6; padding: 0.5em 0.8em; border-left: 4px solid #e0b000; }
"""


def build_index(metrics_dir: Path = paths.METRICS, out_path: Path = paths.INDEX_HTML,
                headline: str = "sparse+rg_vlm@1", split: str = "fresh", policy: str | None = None) -> str:
    """Write ``index.html`` from the metrics files; returns the HTML. ``headline`` is the
    fusion drawn in Figure 4 left and checked in the claims; ``split`` the split they use;
    ``policy`` the evaluation policy of the figures and claims (default: the first evaluated)."""
    evaluation = json.loads((metrics_dir / "evaluation.json").read_text())
    card = json.loads((metrics_dir / "dataset.json").read_text())
    all_policies = pd.DataFrame(evaluation["summary"])
    policies = list(evaluation["provenance"].get("policies", {"greedy": "greedy"}))
    policy = policy or policies[0]
    summary = all_policies[all_policies["policy"] == policy] if "policy" in all_policies else all_policies
    methods = evaluation["provenance"]["reward_methods"]
    title = provenance_title(methods)
    figures = sorted(p.name for p in (out_path.parent / "figures").glob("*.png"))
    scripted = any(lvlm_label(p).startswith("scripted") for p in methods.values())
    notebooks = sorted(p.name for p in (out_path.parent / "notebooks").glob("*.html"))
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>rgvlm report: {html.escape(title)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>rgvlm report</h1><p><b>{html.escape(title)}</b></p>",
    ]
    if scripted:
        parts.append("<p class='note'>Labels made by the <b>scripted annotator</b>: answers computed from the "
                     "dataset's privileged ground truth with configured noise. It is not an LVLM.</p>")
    first = [f for f in ("fig4_left.png", "fig4_right.png", "generalisation.png") if f in figures]
    for name in first + [f for f in figures if f not in first]:
        parts.append(f"<figure><img src='figures/{name}' alt='{name}'><figcaption>{name}</figcaption></figure>")
    described = evaluation["provenance"].get("policies", {policy: policy})
    parts.append(f"<p>Figures and the claims below use the <b>{html.escape(policy)}</b> evaluation policy "
                 f"({html.escape(described.get(policy, policy))}); the tables show every evaluated policy.</p>")
    claims = story(summary, headline, split)
    if claims:
        parts.append(f"<h2>Does the paper's story hold here? ({html.escape(policy)} policy)</h2><ul>"
                     + "".join(f"<li>{html.escape(line)}</li>" for line in claims) + "</ul>")
    baselines = evaluation["provenance"].get("baselines", {})
    if baselines:
        parts.append("<p>Baselines trained in the same stack, with the same networks: " + "; ".join(
            f"<b>{html.escape(n)}</b>: {html.escape(d)}" for n, d in baselines.items()) + ".</p>")
    for name in policies if "policy" in all_policies else [None]:
        rows = all_policies if name is None else all_policies[all_policies["policy"] == name]
        label = "" if name is None else f" — {name} policy ({described.get(name, name)})"
        for metric in ("completion", "success"):
            parts.append(f"<h2>{METRIC_LABELS[metric].capitalize()}{html.escape(label)}: mean over training seeds "
                         "[95% bootstrap interval over seeds and episodes]</h2>")
            parts.append(results_table(rows, metric))
    seeds = sorted(summary["num_seeds"].unique()) if not summary.empty else [0]
    episodes = int((summary["num_episodes"] / summary["num_seeds"]).max()) if not summary.empty else 0
    parts.append(f"<p>{' or '.join(map(str, seeds))} training seeds per row; up to {episodes} evaluation episodes per "
                 "(run, split, k). Source: <code>reports/metrics/evaluation.json</code>.</p>")
    sweep_path = out_path.parent / "tuning" / "noise_sweep.json"
    if sweep_path.exists():
        sweep = json.loads(sweep_path.read_text())
        parts.append("<h2>Label noise -> policy (how good must labels be?)</h2>"
                     "<p>RG-VLM and Sparse + RG-VLM trained on labels of the scripted annotator (not an LVLM) at "
                     "several noise levels; label quality per level: " + "; ".join(
                         f"{html.escape(q['level'])}: AUROC {q['auroc_completion']:.3f}, Spearman "
                         f"{q['spearman_progress']:.3f}" for q in sweep["label_quality"])
                     + f". Made by <code>{html.escape(sweep['command'])}</code> "
                       "(<code>reports/tuning/noise_sweep.json</code>; outside <code>dvc repro</code>: it "
                       "trains as many runs again).</p><figure><img src='tuning/noise_sweep.png' "
                       "alt='noise sweep'></figure>")
    training_path = metrics_dir / "training.csv"
    if training_path.exists():
        parts.append("<h2>Did each critic learn? (held-out episodes, last probe)</h2>"
                     + critic_table(pd.read_csv(training_path))
                     + "<p><code>v_return_corr</code>: correlation of V(s) with the Monte-Carlo discounted return of "
                       "the row's own reward on episodes held out from training (about 0: the critic learned "
                       "nothing); <code>v_return_corr_success</code>: the same on the held-out episodes that "
                       "succeeded, where the data's return is near the best one that IQL's V estimates (a fitted "
                       "critic scores near 1 there). <code>adv_weight_gt2</code> / <code>adv_weight_p90</code>: share of advantage "
                       "weights exp(beta A) above 2, and their 90th percentile (all about 1: IQL's policy step is "
                       "behaviour cloning). BC rows' critics train on the sparse reward and do not steer their "
                       "policies. Source: <code>reports/metrics/training.csv</code>.</p>")
    quality_path = metrics_dir / "label_quality.json"
    if quality_path.exists():
        quality = json.loads(quality_path.read_text())
        parts.append("<h2>Label quality: agreement with the privileged ground truth</h2>")
        parts.append("<table><tr><th>reward</th><th>labels by</th><th>Spearman with progress</th>"
                     "<th>AUROC (step completed a sub-task)</th></tr>" + "".join(
            f"<tr><td>{html.escape(m)}</td><td>{html.escape(lvlm_label(quality[m]['provenance']))}</td>"
            f"<td>{quality[m]['spearman_progress']:.3f}</td><td>{quality[m]['auroc_completion']:.3f}</td></tr>"
            for m in method_order(list(quality))) + "</table>")
    costs = cost_table(metrics_dir)
    if costs:
        parts.append("<h2>Labelling cost per method</h2>" + costs
                     + "<p>Sources: <code>reports/metrics/labeling_*.json</code>. Calls are the queries sent to the "
                       "backend in this run; cache hits were answered from <code>outputs/lvlm_cache/</code>.</p>")
    parts.append("<h2>Provenance</h2><h3>Reward methods</h3>")
    parts.append("<table><tr><th>reward</th><th>labels by</th><th>source</th></tr>" + "".join(
        f"<tr><td>{html.escape(m)}</td><td>{html.escape(lvlm_label(methods[m]))}</td>"
        f"<td>{html.escape(str(methods[m].get('source', methods[m].get('method', ''))))}</td></tr>"
        for m in method_order(list(methods))) + "</table>")
    parts.append("<h3>Training and evaluation parameters</h3>")
    parts.append(_json_block({k: v for k, v in evaluation["provenance"].items() if k != "reward_methods"}))
    parts.append(f"<h2>Dataset card</h2><p>{card['episodes']} episodes, {card['transitions']} transitions, "
                 f"{card['distinct_missions']} distinct missions, overall success {card['success_rate']:.3f}.</p>")
    parts.append(_card_table(card))
    parts.append(_json_block(card["parameters"]))
    if notebooks:
        parts.append("<h2>Stage notebooks (executed)</h2><ul>" + "".join(
            f"<li><a href='notebooks/{n}'>{n}</a></li>" for n in notebooks) + "</ul>")
    parts.append("</body></html>\n")
    text = "".join(parts)
    write_bytes_atomic(out_path, text.encode("utf-8"))
    return text
