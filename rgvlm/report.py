"""The report a reader opens first: ``reports/index.html``, and the same report as
``reports/README.md``, which a repository browser renders.

Every number in it is read from the metrics files under ``reports/metrics/``; every
figure is a file under ``reports/figures/`` drawn from them. The title and a provenance
section say which reward sets, which LVLM backend and model, and which parameters
made the results. Rewards from the scripted annotator are labelled as such, never as
an LVLM's.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rgvlm import paths
from rgvlm.data.storage import write_bytes_atomic
from rgvlm.params import MIXTURE_KINDS
from rgvlm.plots import METRIC_LABELS, SPLIT_TITLES, reward_set_order
from rgvlm.rewards.registry import COMPARISON_METHODS, PAPER_METHOD


def lvlm_label(provenance: dict[str, Any]) -> str:
    """Who made a reward set's labels, in words."""
    lvlm = provenance.get("lvlm")
    if not lvlm:
        return "no LVLM"
    if lvlm.get("backend") == "scripted":
        return "scripted annotator (privileged ground truth + noise; not an LVLM)"
    return f"LVLM {lvlm.get('model')} via {lvlm.get('backend')}"


def provenance_title(reward_sets: dict[str, dict[str, Any]]) -> str:
    """A one-line summary of where the rewards came from, for titles (``reward_sets``: name -> provenance)."""
    labels = sorted({lvlm_label(p) for p in reward_sets.values()})
    return "rewards: " + ", ".join(reward_set_order(list(reward_sets))) + " | labels by: " + "; ".join(labels)


#: Rows that use no reward model: behaviour cloning in the same stack, and the d3rlpy peer library.
BASELINE_ROWS = ("bc", "bc_success", "d3rlpy_bc", "d3rlpy_cql")


def fusion_lambda(name: str, dense: str = "rg_vlm") -> float | None:
    """lambda of a reward set named ``sparse+<dense>@<lambda>`` (None for any other name)."""
    prefix = f"sparse+{dense}@"
    return float(name[len(prefix):]) if name.startswith(prefix) else None


def figure4_left_reward_sets(reward_sets: list[str], headline: str) -> list[str]:
    """Figure 4 left: Sparse, Sparse + RG-VLM (the headline lambda), RG-VLM alone, every
    comparison method, the baselines (BC, filtered BC, d3rlpy) and the oracle as the upper reference."""
    wanted = ["sparse", headline, PAPER_METHOD, *COMPARISON_METHODS, *BASELINE_ROWS, "oracle"]
    return [m for m in wanted if m in reward_sets]


def figure4_right_reward_sets(reward_sets: list[str]) -> list[str]:
    """Figure 4 right, the fusion ablation: Sparse, RG-VLM alone and Sparse + RG-VLM for each lambda."""
    fusions = sorted((m for m in reward_sets if fusion_lambda(m) is not None), key=fusion_lambda)
    return [m for m in ("sparse", "rg_vlm") if m in reward_sets] + fusions


def figure4_metrics(summary: pd.DataFrame, headline: str, split: str = "fresh", policy: str | None = None) -> dict:
    """Figure 4's numbers: completion by k of every reward set Figure 4 left or right draws, in the
    ``split`` panel under ``policy`` (default: the first in ``summary``). The report stage writes
    them to ``reports/figure4.json``, a small metrics file whose values ``dvc exp show`` lists per
    experiment: ``{split: {policy: {reward_set: {"k<k>": {completion_mean, completion_low,
    completion_high}}}}}`` (DVC joins the keys with dots:
    ``fresh.sampled.sparse+rg_vlm@1.k1.completion_mean``). ``summary`` is evaluation.json's
    ``summary`` (:func:`rgvlm.evaluation.summarize`): the same numbers, never recomputed."""
    policy = policy or str(summary["policy"].iloc[0])
    summary = summary[summary["policy"] == policy]
    reward_sets = sorted(summary["reward_set"].unique())
    drawn = dict.fromkeys([*figure4_left_reward_sets(reward_sets, headline), *figure4_right_reward_sets(reward_sets)])
    rows = summary[(summary["split"] == split) & summary["reward_set"].isin(list(drawn))]
    table: dict[str, dict[str, dict[str, float]]] = {}
    for row in rows.sort_values(["reward_set", "k"]).itertuples(index=False):
        table.setdefault(row.reward_set, {})[f"k{int(row.k)}"] = {
            name: float(getattr(row, name)) for name in ("completion_mean", "completion_low", "completion_high")}
    return {split: {policy: table}}


def _cell(summary: pd.DataFrame, reward_set: str, split: str, k: int, metric: str) -> pd.Series | None:
    match = summary[(summary["reward_set"] == reward_set) & (summary["split"] == split) & (summary["k"] == k)]
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
    have = set(summary["reward_set"])
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


# The report is built once, as a list of blocks (headings, paragraphs, figures, tables), and
# rendered twice: to HTML (index.html) and to Markdown (README.md, which a repository browser
# renders). Every number and every table therefore exists in one representation only, so the
# two files cannot disagree.


@dataclass(frozen=True)
class Code:
    """Inline code. Reward-set names go in it: on GitHub a bare ``sparse+rg_vlm@0.5`` becomes a mail link."""

    text: str


@dataclass(frozen=True)
class Bold:
    text: str


@dataclass(frozen=True)
class Link:
    text: str
    href: str


Inline = str | Code | Bold | Link
Spans = tuple[Inline, ...]


@dataclass(frozen=True)
class Heading:
    level: int
    text: Spans


@dataclass(frozen=True)
class Para:
    text: Spans
    note: bool = False  # a highlighted warning (the scripted annotator is not an LVLM)


@dataclass(frozen=True)
class Bullets:
    items: tuple[Spans, ...]


@dataclass(frozen=True)
class Figure:
    src: str  # relative to the reports folder, where both index.html and README.md live
    alt: str
    caption: str | None = None


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[Inline, ...], ...]


@dataclass(frozen=True)
class Preformatted:
    text: str
    language: str = ""


Block = Heading | Para | Bullets | Figure | Table | Preformatted


def _heading(level: int, *text: Inline) -> Heading:
    return Heading(level, text)


def _number(value: Any) -> str:
    """A label-quality number with 3 decimals; "-" when it is missing (a file written before the
    measure existed) or not a number (NaN: no episode to compute it on)."""
    return f"{value:.3f}" if isinstance(value, (int, float)) and value == value else "-"


def _para(*text: Inline, note: bool = False) -> Para:
    return Para(text, note)


def _json(obj: Any) -> Preformatted:
    return Preformatted(json.dumps(obj, indent=1, sort_keys=True), "json")


def _html_inline(text: Spans) -> str:
    out = []
    for span in text:
        if isinstance(span, Code):
            out.append(f"<code>{html.escape(span.text)}</code>")
        elif isinstance(span, Bold):
            out.append(f"<b>{html.escape(span.text)}</b>")
        elif isinstance(span, Link):
            out.append(f"<a href='{html.escape(span.href)}'>{html.escape(span.text)}</a>")
        else:
            out.append(html.escape(span))
    return "".join(out)


def _html_block(block: Block) -> str:
    match block:
        case Heading(level, text):
            return f"<h{level}>{_html_inline(text)}</h{level}>"
        case Para(text, note):
            return f"<p class='note'>{_html_inline(text)}</p>" if note else f"<p>{_html_inline(text)}</p>"
        case Bullets(items):
            return "<ul>" + "".join(f"<li>{_html_inline(item)}</li>" for item in items) + "</ul>"
        case Figure(src, alt, caption):
            tail = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
            return f"<figure><img src='{html.escape(src)}' alt='{html.escape(alt)}'>{tail}</figure>"
        case Table(header, rows):
            return ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
                    + "".join("<tr>" + "".join(f"<td>{_html_inline((c,))}</td>" for c in row) + "</tr>" for row in rows)
                    + "</table>")
        case Preformatted(text):
            return f"<pre>{html.escape(text)}</pre>"
    raise TypeError(f"not a report block: {block!r}")


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1.5em; }
td, th { border: 1px solid #ccc; padding: 3px 6px; text-align: right; }
td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; }
pre { background: #f6f6f6; padding: 0.6em; font-size: 0.8em; overflow-x: auto; }
.note { background: #fff6d6; padding: 0.5em 0.8em; border-left: 4px solid #e0b000; }
"""


def render_html(title: str, blocks: list[Block]) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>rgvlm report: {html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>" + "".join(_html_block(b) for b in blocks) + "</body></html>\n")


# Backslash-escaped so that prose never turns into emphasis, code, links, entities or HTML; "_" too,
# unless it lies between two letters or digits (as in erl_vlm: GitHub never reads that as emphasis).
# "|" is escaped in table cells only: there it separates columns, even inside code spans.
_MARKDOWN_SPECIAL = re.compile(r"[\\`*~\[\]<&]|(?<![^\W_])_|_(?![^\W_])")
# What opens a heading, quote, list or rule where a paragraph or list item starts.
_MARKDOWN_BLOCK_START = re.compile(r"^(?:#{1,6}(?=\s|$)|>|[-+](?=\s|$)|-(?=-)|\d{1,9}(?=[.)](?:\s|$)))")


def _md_escape(text: str) -> str:
    return _MARKDOWN_SPECIAL.sub(lambda match: "\\" + match.group(0), text)


def _md_block_start(line: str) -> str:
    """A paragraph's or list item's Markdown, escaped where it would open another block."""
    line = line.lstrip()  # four leading spaces would make a code block
    start = _MARKDOWN_BLOCK_START.match(line)
    if start:  # a list number is escaped at its "." or ")": digits cannot be
        at = start.end() if line[0].isdigit() else 0
        line = line[:at] + "\\" + line[at:]
    return line


def _md_code(text: str) -> str:
    """A code span: fenced by more backticks than it holds, padded when CommonMark would trim it."""
    runs = re.findall("`+", text)
    fence = "`" * (max(map(len, runs), default=0) + 1)
    pad = " " if runs or text[:1] == text[-1:] == " " else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _md_inline(text: Spans) -> str:
    out = []
    for span in text:
        if isinstance(span, Code):
            out.append(_md_code(span.text))
        elif isinstance(span, Bold):
            out.append(f"**{_md_escape(span.text)}**")
        elif isinstance(span, Link):
            out.append(f"[{_md_escape(span.text)}]({span.href})")
        else:
            out.append(_md_escape(span))
    return "".join(out)


def _md_block(block: Block) -> str:
    match block:
        case Heading(level, text):
            line = _md_inline(text).lstrip()
            if line.endswith("#") and not line.endswith("\\#"):  # else read as the heading's closing sequence
                line = line[:-1] + "\\#"
            return "#" * level + " " + line
        case Para(text, note):
            return ("> " if note else "") + _md_block_start(_md_inline(text))
        case Bullets(items):
            return "\n".join(f"- {_md_block_start(_md_inline(item))}" for item in items)
        case Figure(src, alt, caption):
            caption = (caption or "").strip()  # "* x *" would not be emphasis
            return f"![{_md_escape(alt)}]({src})" + (f"\n\n*{_md_escape(caption)}*" if caption else "")
        case Table(header, rows):
            def line(cells: list[str]) -> str:
                return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
            return "\n".join([line([_md_escape(h) for h in header]),
                              line([":--", *["--:"] * (len(header) - 1)]),
                              *(line([_md_inline((c,)) for c in row]) for row in rows)])
        case Preformatted(text, language):
            return f"```{language}\n{text}\n```"
    raise TypeError(f"not a report block: {block!r}")


def render_markdown(title: str, blocks: list[Block]) -> str:
    # An HTML comment: GitHub hides it, and whoever opens the file to edit it reads where it comes from.
    generated = "<!-- Generated by rgvlm/report.py (dvc stage `report`) from reports/metrics/, like index.html; do not edit. -->"
    return "\n\n".join([generated, *(_md_block(b) for b in blocks)]) + "\n"


def cost_table(metrics_dir: Path) -> Table | None:
    """One row per labelling stage: LVLM calls, tokens, cache hits, time and estimated cost."""
    keys = ("lvlm_calls", "cache_hits", "prompt_tokens", "completion_tokens", "reasks", "wall_time_s",
            "estimated_cost_usd")
    rows = []
    for path in sorted(metrics_dir.glob("labelling_*.json")):
        record = json.loads(path.read_text())
        cost = record["cost"]
        rows.append((Code(path.stem.partition("_")[2]), lvlm_label(record["provenance"]),
                     *(str(cost.get(k, "-")) for k in keys)))
    return Table(("method", "labels by", *keys), tuple(rows)) if rows else None


def critic_table(log: pd.DataFrame) -> Table | None:
    """Per trained row: the critic diagnostic at the last probed update, mean [min, max] over seeds
    (None when no diagnostic was logged)."""
    from rgvlm.rl.diagnostics import DIAGNOSTIC_NAMES

    names = [n for n in DIAGNOSTIC_NAMES if n in log]
    probed = log.dropna(subset=names) if names else log.iloc[0:0]
    if probed.empty:
        return None
    last = probed[probed["step"] == probed.groupby("reward_set")["step"].transform("max")]
    rows = []
    for reward_set in reward_set_order(sorted(last["reward_set"].unique())):
        group = last[last["reward_set"] == reward_set]
        rows.append((Code(reward_set), str(int(group["step"].iloc[0])), str(len(group)),
                     *(f"{group[n].mean():.3f} [{group[n].min():.3f}, {group[n].max():.3f}]" for n in names)))
    return Table(("row", "update", "seeds", *names), tuple(rows))


def _fmt_interval(mean: float, low: float, high: float) -> str:
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def results_table(summary: pd.DataFrame, metric: str) -> Table:
    """Rows reward set x split, columns k; cells mean [95% interval]."""
    ks = sorted(summary["k"].unique())
    rows = []
    for split in [s for s in SPLIT_TITLES if s in set(summary["split"])]:
        for reward_set in reward_set_order(sorted(summary["reward_set"].unique())):
            cells = []
            for k in ks:
                r = _cell(summary, reward_set, split, k, metric)
                cells.append("-" if r is None else
                             _fmt_interval(r[f"{metric}_mean"], r[f"{metric}_low"], r[f"{metric}_high"]))
            rows.append((Code(reward_set), split, *cells))
    return Table(("reward", "split", *(f"k={k}" for k in ks)), tuple(rows))


def _fmt_number(value: Any) -> str:
    """A dataset card value: integers as they are, fractions to 4 decimals without trailing zeros."""
    if isinstance(value, float) and not value.is_integer():
        return f"{round(value, 4):g}"
    return str(int(value)) if isinstance(value, float) else str(value)


def _card_table(card: dict[str, Any]) -> Table:
    columns = ("k", "episodes", "transitions", "mean_length", "success_rate", "mean_completion",
               *(f"share_{kind}" for kind in MIXTURE_KINDS), *(f"success_{kind}" for kind in MIXTURE_KINDS))
    present = tuple(c for c in columns if any(c in row for row in card["per_k"]))
    return Table(present, tuple(tuple(_fmt_number(row.get(c, "-")) for c in present) for row in card["per_k"]))


def report_blocks(metrics_dir: Path = paths.METRICS, reports_dir: Path = paths.REPORTS,
                  headline: str = "sparse+rg_vlm@1", split: str = "fresh",
                  policy: str | None = None) -> tuple[str, list[Block]]:
    """The report's title and blocks, read from the metrics files under ``metrics_dir`` and the
    figures, tuning results and notebooks under ``reports_dir``. ``headline`` is the fusion drawn
    in Figure 4 left and checked in the claims; ``split`` the split they use; ``policy`` the
    evaluation policy of the figures and claims (default: the first evaluated)."""
    evaluation = json.loads((metrics_dir / "evaluation.json").read_text())
    card = json.loads((metrics_dir / "dataset.json").read_text())
    all_policies = pd.DataFrame(evaluation["summary"])
    policies = list(evaluation["provenance"].get("policies", {"greedy": "greedy"}))
    policy = policy or policies[0]
    summary = all_policies[all_policies["policy"] == policy] if "policy" in all_policies else all_policies
    reward_sets = evaluation["provenance"]["reward_sets"]
    title = provenance_title(reward_sets)
    figures = sorted(p.name for p in (reports_dir / "figures").glob("*.png"))
    notebooks = sorted(p.name for p in (reports_dir / "notebooks").glob("*.html"))
    blocks: list[Block] = [_heading(1, "rgvlm report"), _para(Bold(title))]
    if any(lvlm_label(p).startswith("scripted") for p in reward_sets.values()):
        blocks.append(_para("Labels made by the ", Bold("scripted annotator"), ": answers computed from the "
                            "dataset's privileged ground truth with configured noise. It is not an LVLM.", note=True))
    first = [f for f in ("fig4_left.png", "fig4_right.png", "generalisation.png") if f in figures]
    blocks += [Figure(f"figures/{name}", name, name) for name in first + [f for f in figures if f not in first]]
    described = evaluation["provenance"].get("policies", {policy: policy})
    blocks.append(_para("Figures and the claims below use the ", Bold(policy), f" evaluation policy "
                        f"({described.get(policy, policy)}); the tables show every evaluated policy."))
    claims = story(summary, headline, split)
    if claims:
        blocks += [_heading(2, f"Does the paper's story hold here? ({policy} policy)"),
                   Bullets(tuple((line,) for line in claims))]
    baselines = evaluation["provenance"].get("baselines", {})
    if baselines:
        described_baselines: list[Inline] = []
        for name, description in baselines.items():
            described_baselines += ["; " if described_baselines else "", Bold(name), f": {description}"]
        blocks.append(_para("Baselines that use no reward model (the same stack and networks as IQL, or the d3rlpy "
                            "peer library): ", *described_baselines, "."))
    for name in policies if "policy" in all_policies else [None]:
        rows = all_policies if name is None else all_policies[all_policies["policy"] == name]
        label = "" if name is None else f" — {name} policy ({described.get(name, name)})"
        for metric in ("completion", "success"):
            blocks += [_heading(2, f"{METRIC_LABELS[metric].capitalize()}{label}: mean over training seeds "
                                   "[95% bootstrap interval over seeds and episodes]"),
                       results_table(rows, metric)]
    seeds = sorted(summary["num_seeds"].unique()) if not summary.empty else [0]
    episodes = int((summary["num_episodes"] / summary["num_seeds"]).max()) if not summary.empty else 0
    blocks.append(_para(f"{' or '.join(map(str, seeds))} training seeds per row; up to {episodes} evaluation "
                        "episodes per (run, split, k). Source: ", Code("reports/metrics/evaluation.json"), "."))
    sweep_path = reports_dir / "tuning" / "noise_sweep.json"
    if sweep_path.exists():
        sweep = json.loads(sweep_path.read_text())
        # Sweeps before gvl relabelled RG-VLM only, and their records carry no method or VOC.
        methods = list(dict.fromkeys(q.get("method", "rg_vlm") for q in sweep["label_quality"]))
        levels = "; ".join(f"{q.get('method', 'rg_vlm')} {q['level']}: AUROC {q['auroc_completion']:.3f}, "
                           f"Spearman {q['spearman_progress']:.3f}" + (f", VOC {q['voc']:.3f}" if "voc" in q else "")
                           for q in sweep["label_quality"])
        trained = ", ".join(f"{m} and sparse+{m}" if m == "rg_vlm" else m for m in methods)
        # Its training settings, so the sweep's rows are never read as the default run's.
        settings = ", ".join(part for part in (
            f"{len(sweep['training_seeds'])} training seeds" if "training_seeds" in sweep else "",
            f"{sweep['iql_num_steps']:,} IQL updates per run" if "iql_num_steps" in sweep else "",
            f"{sweep['episodes_per_k']} fresh episodes per k" if "episodes_per_k" in sweep else "",
            f"{sweep['policy']} policy" if "policy" in sweep else "") if part)
        blocks += [_heading(2, "Label noise -> policy (how good must labels be?)"),
                   _para(f"IQL trained on {trained} from labels of the scripted annotator (not an LVLM) at "
                         f"several noise levels ({settings}); label quality per level: {levels}. Made by ",
                         Code(sweep["command"]),
                         " (", Code("reports/tuning/noise_sweep.json"), "; outside ", Code("dvc repro"),
                         ": it trains as many runs again)."),
                   Figure("tuning/noise_sweep.png", "noise sweep")]
    training_path = metrics_dir / "training.csv"
    if training_path.exists():
        critic = critic_table(pd.read_csv(training_path))
        blocks += [_heading(2, "Did each critic learn? (held-out episodes, last probe)"),
                   critic or _para("No critic diagnostic was logged (train.holdout_fraction is 0)."),
                   _para(Code("v_return_corr"), ": correlation of V(s) with the Monte-Carlo discounted return of the "
                         "row's own reward on episodes held out from training (about 0: the critic learned nothing); ",
                         Code("v_return_corr_success"), ": the same on the held-out episodes that succeeded, where "
                         "the data's return is near the best one that IQL's V estimates (a fitted critic scores near "
                         "1 there). ", Code("adv_weight_gt2"), " / ", Code("adv_weight_p90"), ": share of advantage "
                         "weights exp(beta A) above 2, and their 90th percentile (all about 1: IQL's policy step is "
                         "behaviour cloning). BC rows' critics train on the sparse reward and do not steer their "
                         "policies. Source: ", Code("reports/metrics/training.csv"), ".")]
    quality_path = metrics_dir / "label_quality.json"
    if quality_path.exists():
        quality = json.loads(quality_path.read_text())
        blocks += [_heading(2, "Label quality: agreement with the privileged ground truth, and VOC without it"),
                   Table(("reward", "labels by", "Spearman with progress", "AUROC (step completed a sub-task)",
                          "VOC (expert episodes)"),
                         tuple((Code(m), lvlm_label(quality[m]["provenance"]), _number(quality[m].get("spearman_progress")),
                                _number(quality[m].get("auroc_completion")), _number(quality[m].get("voc")))
                               for m in reward_set_order(list(quality)))),
                   _para("Spearman and AUROC need privileged ground truth (which step completed which sub-task), "
                         "which a benchmark has and a user's own data does not. VOC (value-order correlation, GVL) "
                         "needs only trajectories known to succeed, which a user has on their own data: the mean over "
                         "the expert episodes of the rank correlation between a value series and time. The series is "
                         "the method's own per-state value where it has one (", Code("gvl"), "'s progress), else the "
                         "running sum of the reward centred by its median over the dataset (GVL defines VOC for "
                         "values; this is its adaptation to rewards): about 0 for an uninformative reward, toward 1 "
                         "for one that pays expert steps above the typical step. Source: ",
                         Code("reports/metrics/label_quality.json"), ".")]
    costs = cost_table(metrics_dir)
    if costs:
        blocks += [_heading(2, "Labelling cost per method"), costs,
                   _para("Sources: ", Code("reports/metrics/labelling_*.json"), ". Calls are the queries sent to the "
                         "backend in this run; cache hits were answered from ", Code("outputs/lvlm_cache/"), ".")]
    ordered = reward_set_order(list(reward_sets))
    blocks += [_heading(2, "Provenance"), _heading(3, "Reward sets"),
               Table(("reward", "labels by", "source"),
                     tuple((Code(m), lvlm_label(reward_sets[m]), str(reward_sets[m].get("source", reward_sets[m].get("method", ""))))
                           for m in ordered)),
               _heading(3, "Reward-set parameters (the LVLM's settings included)"),
               _json({m: {k: v for k, v in reward_sets[m].items() if k != "source"} for m in ordered}),
               _heading(3, "Training and evaluation parameters"),
               _json({k: v for k, v in evaluation["provenance"].items() if k != "reward_sets"}),
               _heading(2, "Dataset card"),
               _para(f"{card['episodes']} episodes, {card['transitions']} transitions, {card['distinct_missions']} "
                     f"distinct missions, overall success {card['success_rate']:.3f}."),
               _card_table(card), _json(card["parameters"])]
    if notebooks:
        blocks += [_heading(2, "Stage notebooks (executed)"),
                   Bullets(tuple((Link(n, f"notebooks/{n}"),) for n in notebooks))]
    return title, blocks


def build_report(metrics_dir: Path = paths.METRICS, reports_dir: Path = paths.REPORTS,
                 headline: str = "sparse+rg_vlm@1", split: str = "fresh", policy: str | None = None) -> tuple[str, str]:
    """Write ``index.html`` and ``README.md`` into ``reports_dir``, both rendered from the same
    blocks (:func:`report_blocks`); returns their texts (HTML, Markdown)."""
    title, blocks = report_blocks(metrics_dir, reports_dir, headline, split, policy)
    page, markdown = render_html(title, blocks), render_markdown(title, blocks)
    write_bytes_atomic(reports_dir / "index.html", page.encode("utf-8"))
    write_bytes_atomic(reports_dir / "README.md", markdown.encode("utf-8"))
    return page, markdown
