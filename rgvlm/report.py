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
from rgvlm.atomic import write_bytes_atomic
from rgvlm.evaluation.paired import ALPHA, PER_LAYOUT_FILE, decide
from rgvlm.params import MIXTURE_KINDS
from rgvlm.plots import BASELINE_ROWS, METRIC_LABELS, SPLIT_TITLES, reward_set_order
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


def report_family(paired: pd.DataFrame, policy: str | None, split: str) -> pd.DataFrame:
    """The family of tests the report makes, decided with Holm's correction (:func:`rgvlm.evaluation.paired.decide`):
    every paired difference of evaluation.json's ``paired`` for the report's policy and split (each
    row - sparse, each row - bc, each sparse+rg_vlm@lambda - rg_vlm, at every k), one test each."""
    if paired.empty:
        return paired
    family = paired[(paired["split"] == split) & ((paired["policy"] == policy) if policy and "policy" in paired
                                                  else True)]
    return decide(family.reset_index(drop=True))


def _signed(value: float) -> str:
    return f"{value:+.3f}"


def _difference_text(row: pd.Series | dict) -> str:
    return f"{_signed(row['difference'])} [{_signed(row['low'])}, {_signed(row['high'])}]"


def _verdicts(family: pd.DataFrame, row: str, reference: str) -> pd.DataFrame:
    return family[(family["row"] == row) & (family["reference"] == reference)].sort_values("k")


def _ks(cells: pd.DataFrame, verdict: str) -> list[int]:
    return [int(k) for k in cells[cells["verdict"] == verdict]["k"]]


def story(family: pd.DataFrame, headline: str, split: str = "fresh") -> list[str]:
    """The paper's claims decided on the paired differences of ``family`` (:func:`report_family`:
    layout-paired, Holm-corrected over the whole family), in sentences built from the metrics.

    0. The sanity check: can this run detect a dense reward's benefit at all? oracle - sparse per k.
    1. Dense LVLM rewards help more as k grows: rg_vlm - sparse per k, and its least-squares slope.
    2. Sparse + RG-VLM beats each alone: the headline fusion - rg_vlm and - sparse per k.
    3. Which rows beat behaviour cloning on all data (row - bc).
    A difference is "resolved" only when Holm's adjusted p is below 0.05 and its 95% interval
    excludes 0; otherwise the sentence says "not resolved", never "better".
    """
    lines: list[str] = []
    if family.empty:
        return lines
    m = len(family)
    if not (oracle := _verdicts(family, "oracle", "sparse")).empty:
        above, below = _ks(oracle, "above"), _ks(oracle, "below")
        longer = [k for k in above if k >= 2]
        verdict = ("this run can detect a dense reward's benefit" if len(longer) >= 2 else
                   "not resolved: this run cannot reliably tell a perfect dense reward from Sparse, so no LVLM "
                   "reward's comparison with Sparse below can be read as a result")
        lines.append(f"Sanity check (the oracle, a perfect dense reward, against Sparse), {split} split: oracle - "
                     f"sparse is " + ", ".join(f"{_difference_text(r)} at k={int(r.k)}" for _, r in oracle.iterrows())
                     + f"; resolved above 0 at k in {above or 'none'} and below at k in {below or 'none'} (Holm over "
                     f"{m} tests); {verdict}.")
    if not (dense := _verdicts(family, "rg_vlm", "sparse")).empty:
        text = ", ".join(f"{_difference_text(r)} at k={int(r.k)}" for _, r in dense.iterrows())
        line = f"Claim 1 (dense LVLM rewards help more as k grows), {split} split: rg_vlm - sparse is {text}"
        if len(dense) >= 2:
            slope = float(np.polyfit(dense["k"].astype(float), dense["difference"], 1)[0])
            line += (f"; the least-squares slope over k is {slope:+.4f} per sub-task (descriptive, not a test), so "
                     f"the mean advantage {'grows' if slope > 0 else 'does not grow'} with k here")
        above = _ks(dense, "above")
        lines.append(line + f"; resolved above 0 at k in {above or 'none'}"
                     + ("" if above else " (not resolved at any k)") + f", below at k in {_ks(dense, 'below') or 'none'}.")
    fused_dense, fused_sparse = _verdicts(family, headline, "rg_vlm"), _verdicts(family, headline, "sparse")
    if not fused_dense.empty and not fused_sparse.empty:
        both = sorted(set(_ks(fused_dense, "above")) & set(_ks(fused_sparse, "above")))
        lines.append(
            f"Claim 2 (Sparse + RG-VLM beats each alone), {headline}, {split} split: {headline} - rg_vlm is "
            + ", ".join(f"{_difference_text(r)} at k={int(r.k)}" for _, r in fused_dense.iterrows())
            + f"; {headline} - sparse is "
            + ", ".join(f"{_difference_text(r)} at k={int(r.k)}" for _, r in fused_sparse.iterrows())
            + f"; resolved above both at k in {both or 'none'}" + ("" if both else " (not resolved at any k)") + ".")
    versus_bc = family[family["reference"] == "bc"]
    if not versus_bc.empty:
        above = [f"{r} (k in {_ks(cells, 'above')})" for r, cells in versus_bc.groupby("row", sort=False)
                 if _ks(cells, "above")]
        below = [f"{r} (k in {_ks(cells, 'below')})" for r, cells in versus_bc.groupby("row", sort=False)
                 if _ks(cells, "below")]
        lines.append(f"Against behaviour cloning on all data (row - bc), {split} split: resolved above bc: "
                     f"{', '.join(above) or 'none'}; resolved below bc: {', '.join(below) or 'none'}; every other "
                     "row and k: not resolved.")
    return lines


def paired_table(family: pd.DataFrame) -> Table:
    """One line per contrast (row - reference), columns k: the paired difference [95% interval] and
    its verdict after Holm's correction ("above", "below", or "n.r.": not resolved)."""
    ks = sorted(int(k) for k in family["k"].unique())
    lines = []
    order = {name: i for i, name in enumerate(reward_set_order(sorted(family["row"].unique())))}
    contrasts = family[["row", "reference", "kind"]].drop_duplicates()
    contrasts = contrasts.assign(_kind=contrasts["kind"].map({k: i for i, k in enumerate(dict.fromkeys(family["kind"]))}),
                                 _row=contrasts["row"].map(order)).sort_values(["_kind", "_row"])
    for contrast in contrasts.itertuples(index=False):
        cells = []
        for k in ks:
            match = family[(family["row"] == contrast.row) & (family["reference"] == contrast.reference)
                           & (family["k"] == k)]
            if match.empty:
                cells.append("-")
                continue
            r = match.iloc[0]
            mark = "n.r." if r["verdict"] == "not resolved" else r["verdict"]
            cells.append(f"{_difference_text(r)} {mark}")
        lines.append((Code(f"{contrast.row} - {contrast.reference}"), *cells))
    return Table(("difference (completion)", *(f"k={k}" for k in ks)), tuple(lines))


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
            line = _md_inline(text).strip()  # trailing spaces after a "#" would still close the heading
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


#: VLM-CaR's verification counts (rgvlm.methods.vlm_car), in the order the report shows them.
VLM_CAR_COUNTS = (("missions", "missions"), ("decompositions_misread", "decompositions misread (vs the true sub-tasks)"),
                  ("subtasks", "distinct sub-tasks"), ("program_queries", "program queries"),
                  ("regenerations", "programs regenerated after a failed check"),
                  ("subtask_drops", "(mission, sub-task) pairs dropped (their program failed there)"),
                  ("failed_programs", "sub-tasks dropped (no program passed)"),
                  ("accepted_programs", "programs accepted"))


def vlm_car_table(metrics_dir: Path) -> Table | None:
    """VLM-CaR's own verification at work: what its checks caught, regenerated and dropped."""
    path = metrics_dir / "labelling_vlm_car.json"
    if not path.exists():
        return None
    cost = json.loads(path.read_text())["cost"]
    failures = ", ".join(f"{rule} {n}" for rule, n in sorted(cost.get("program_failures", {}).items())) or "none"
    rows = [(label, str(cost.get(key, "-"))) for key, label in VLM_CAR_COUNTS]
    rows.insert(5, ("failed checks, by rule", failures))  # after the regenerations they caused
    return Table(("VLM-CaR verification", "count"), tuple(rows))


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


def chaining_table(chaining: dict[str, list[dict]], policy: str, split: str) -> Table | None:
    """Rows reward set; columns the success of a sub-task once reached, per kind (open / put) and
    per position in the sequence (1st .. last), each "share (episodes that reached it)". None when
    evaluation.json holds no chaining tables (written before they existed)."""
    if not chaining:
        return None
    tables = {name: pd.DataFrame(rows) for name, rows in chaining.items()}
    tables = {name: t[(t["policy"] == policy) & (t["split"] == split)] for name, t in tables.items()}
    by_kind, by_position = tables["by_kind"], tables["by_position"]
    if by_kind.empty:
        return None
    kinds = sorted(by_kind["kind"].unique())
    positions = sorted(int(p) for p in by_position["position"].unique())

    def cell(table: pd.DataFrame, reward_set: str, column: str, value: Any) -> str:
        row = table[(table["reward_set"] == reward_set) & (table[column] == value)]
        return "-" if row.empty else f"{row['success_when_reached'].iloc[0]:.2f} ({int(row['reached'].iloc[0])})"

    rows = tuple((Code(r), *(cell(by_kind, r, "kind", k) for k in kinds),
                  *(cell(by_position, r, "position", p) for p in positions))
                 for r in reward_set_order(sorted(by_kind["reward_set"].unique())))
    return Table(("reward", *(f"{k} sub-tasks" for k in kinds), *(f"position {p}" for p in positions)), rows)


def instance_text(env: dict[str, Any]) -> str:
    """The instance of the suite the data and the evaluation use, in words (Figure 4 depends on it)."""
    from rgvlm.envs.suite import NUM_ROOM_COLS, NUM_ROOM_ROWS

    named = {"room_size": "room size", "objs_per_room": "objects per room", "door_subtask_prob": "share of door sub-tasks",
             "steps_per_subtask": "steps per sub-task in the time limit"}
    parts = [f"{label} {env[key]}" for key, label in named.items() if key in env]
    return ", ".join([f"{NUM_ROOM_ROWS} x {NUM_ROOM_COLS} rooms", *parts])


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


def _evaluation_seeds(evaluation_params: dict[str, Any]) -> str:
    """The evaluation's layouts in words: the reset seeds of each split (rgvlm.envs.seeds)."""
    from rgvlm.envs.seeds import BLOCK, FRESH_OFFSET, VALIDATION_OFFSET

    base = int(evaluation_params.get("seed", 0))
    count = evaluation_params.get("episodes_per_k", {})
    count = count if isinstance(count, dict) else {s: count for s in evaluation_params.get("splits", [])}
    parts = []
    if "fresh" in count:
        first = FRESH_OFFSET + base * BLOCK
        parts.append(f"fresh layouts: reset seeds {first:,} to {first + int(count['fresh']) - 1:,} "
                     f"(evaluation.seed {base}, {count['fresh']} per k, the same seeds at every k, for every row and "
                     "training seed)")
    if "seen" in count:
        parts.append(f"seen layouts: the first {count['seen']} dataset layouts of each k")
    validation = VALIDATION_OFFSET + base * BLOCK
    return ("; ".join(parts) + ". These evaluation layouts are the test set: they are used only to report. Every "
            "setting of the run (sampling temperature, training length, the headline lambda) is chosen on the "
            f"validation split (reset seeds from {validation:,} on, reports/tuning/), never on these seeds.")


def figure_captions(policy: str, split: str, headline: str, policies: list[str],
                    interval: str = "training seeds and layouts") -> dict[str, str]:
    """Each figure's caption: what it shows, and what to read from it (``interval``: what the 95%
    intervals resample, in words)."""
    on = f"{SPLIT_TITLES.get(split, split)}; {policy} policy"
    captions = {
        "fig4_left.png": (
            f"Figure 4 left ({on}). Per row: the proportion of sub-tasks completed, the mean number of sub-tasks "
            "done (completion x k) and the full-task success rate against the number of sub-tasks k, mean over "
            f"training seeds with a 95% interval over {interval}. Reward rows are coloured, solid; "
            "baselines and the d3rlpy peers (no reward model) are grey, hollow and dashed; the oracle (a perfect "
            "dense reward) is black dash-dot; the dotted black line is the dataset's own episodes. Read: how far "
            "each row falls below the dataset's level as k grows, and whether the sub-tasks done keep rising with k "
            "(they do not when policies stop after the first sub-tasks). Overlapping intervals here say nothing "
            "about a difference: rows share layouts, so compare them in the paired table below."),
        "fig4_right.png": (
            f"Figure 4 right ({on}): the fusion ablation, sparse + lambda x RG-VLM for each lambda (orange-red, "
            "darker for larger lambda) beside Sparse and RG-VLM alone; the same panels and reference as Figure 4 "
            "left. Read: whether any lambda lies above both Sparse and RG-VLM; the paired differences "
            f"{headline} - rg_vlm and - sparse below decide it."),
        "paired_differences.png": (
            f"Paired differences in completion ({on}), per k, one panel per family of contrasts: each row - "
            "sparse, each row - bc (behaviour cloning on all data) and each fusion - rg_vlm, with 95% intervals "
            "(layouts drawn once for both rows, training seeds per row). A filled marker is a difference resolved "
            "after Holm's correction over the whole family; a hollow one is not resolved. Read: which markers are "
            "filled above the zero line."),
        "generalisation.png": (
            f"Seen layouts against fresh seeds ({policy} policy), completion pooled over k, with 95% intervals over "
            f"{interval}. Read: a gap between the two bars of a row "
            "is what that row loses on layouts it never saw in the dataset."),
        "success_by_k.png": (
            f"Full-task success against k on both splits ({policy} policy), 95% intervals over {interval}. Read: "
            "how fast success falls with k, and from which k on no row finishes whole tasks any more."),
        "training_curves.png": (
            "IQL training losses and the mean V against the update step, mean over training seeds with their range. "
            "Read: whether the losses settle before training ends (the run is long enough) and whether any row "
            "diverges."),
        "critic_diagnostic.png": (
            "The critic diagnostic on held-out episodes against the update step: V's correlation with the "
            "Monte-Carlo return (all and successful episodes) and the advantage weights' spread. Read: a correlation "
            "near 0 means the critic learned nothing; advantage weights all near 1 mean IQL's policy step is "
            "behaviour cloning."),
        "label_quality.png": (
            "Label quality per reward method: Spearman with ground-truth progress and AUROC for the steps that "
            "complete a sub-task (both need privileged ground truth), and VOC on the expert episodes (needs none). "
            "Read: which methods' labels carry the task's progress at all; a method near 0 cannot be expected to "
            "help the policy."),
    }
    for name in policies:
        if name != policy:
            captions[f"fig4_left_{name}.png"] = (
                f"Figure 4 left under the {name} policy ({SPLIT_TITLES.get(split, split)}): the same rows, panels "
                f"and styles as Figure 4 left. Read: how much the choice of evaluation policy moves every row (the "
                f"claims use the {policy} policy).")
    return captions


def _sweep_settings(sweep: dict) -> str:
    """The sweep's own training and evaluation settings, so that its rows are never read as the
    default run's."""
    split = sweep.get("split", "fresh")
    return ", ".join(part for part in (
        f"{len(sweep['training_seeds'])} training seeds" if "training_seeds" in sweep else "",
        f"{sweep['iql_num_steps']:,} IQL updates per run" if "iql_num_steps" in sweep else "",
        f"{sweep['episodes_per_k']} {split} episodes per k" if "episodes_per_k" in sweep else "",
        f"{sweep['policy']} policy" if "policy" in sweep else "") if part)


NOISE_SWEEP_CAPTION = (
    "The noise sweep (labels by the scripted annotator, not an LVLM): each (row, noise level)'s completion gain "
    "over Sparse, paired by layout and averaged over k, with its 95% interval, against the labels' quality: "
    "Spearman with ground-truth progress (left), AUROC and VOC. Filled markers: a method's own labels; hollow: "
    "sparse + lambda x them; colour: the method, marker: the noise level. Line: least squares over the filled "
    "points, with its 95% band from a bootstrap over layouts and training seeds that refits the line on every "
    "resample. Read: where the line crosses 0 is how good labels must be before they help; points below 0 hurt.")


def noise_sweep_blocks(sweep: dict, figure: Any) -> list[Block]:
    """The noise sweep's section, from ``reports/tuning/noise_sweep.json`` (the stage ``noise_sweep``
    of ``optional/dvc.yaml``, outside ``dvc repro``: the report reads whatever result is there, fresh
    or not). ``figure``: the report's figure block maker."""
    heading = _heading(2, "Label noise -> policy (how good must labels be?)")
    if "fits" not in sweep:  # a sweep made before the stage (experiments/noise_sweep.py): no paired statistics
        methods = list(dict.fromkeys(q.get("method", "rg_vlm") for q in sweep["label_quality"]))
        levels = "; ".join(f"{q.get('method', 'rg_vlm')} {q['level']}: AUROC {q['auroc_completion']:.3f}, "
                           f"Spearman {q['spearman_progress']:.3f}" + (f", VOC {q['voc']:.3f}" if "voc" in q else "")
                           for q in sweep["label_quality"])
        trained = ", ".join(f"{m} and sparse+{m}" if m == "rg_vlm" else m for m in methods)
        return [heading,
                _para(f"An earlier sweep, made before the noise_sweep stage (no paired statistics, not sized to "
                      f"resolve a difference of .05): IQL trained on {trained} from labels of the scripted annotator "
                      f"(not an LVLM) at several noise levels, its own runs ({_sweep_settings(sweep)}), not the "
                      f"default run's; label quality per level: {levels}. Made by ", Code(sweep["command"]), " (",
                      Code("reports/tuning/noise_sweep.json"), "). ", Code("make noise-sweep"), " reruns it as the "
                      "stage (outside ", Code("dvc repro"), ")."),
                *figure("noise_sweep.png", "tuning",
                        "The earlier noise sweep: completion of IQL trained on labels from the scripted annotator "
                        "(not an LVLM) at several noise levels, by k, beside each level's label quality. Read: how "
                        "much label quality a gain over Sparse needs; overlapping intervals say nothing about a "
                        "difference (the rows share layouts).")]
    params = sweep.get("params", {}).get("noise_sweep", {})
    roles = {lv["level"]: lv["role"] for lv in sweep["levels"]}
    levels = ", ".join(f"{lv}" + (f" ({role})" if role else "") for lv, role in roles.items())
    fused = sorted({g["row"] for g in sweep["gains"] if g["fused"]})
    ks = ", ".join(map(str, sweep.get("ks", [])))
    fits = sweep["fits"]
    blocks: list[Block] = [
        heading,
        _para(Bold("The sweep's own runs, not the default run's: "),
              f"every method that asks the LVLM ({', '.join(params.get('methods', []))}) relabelled the dataset "
              f"through the scripted annotator (not an LVLM) at the noise levels {levels} (score_sd, misattribution); "
              f"IQL trained on each (method, level){', on ' + ', '.join(fused) if fused else ''} and on sparse, in "
              f"one stack on the same seeds ({_sweep_settings(sweep)}), every run rolled out on the same layouts. "
              f"A gain is a (row, level)'s completion minus sparse's, paired by layout and averaged over k = {ks}. "
              "Made by ", Code("make noise-sweep"), " (the stage noise_sweep of ", Code("optional/dvc.yaml"),
              ", outside ", Code("dvc repro"), "); source ", Code("reports/tuning/noise_sweep.json"), ", every number "
              "recomputable from ", Code(sweep.get("per_layout", "reports/tuning/noise_sweep_per_layout.csv")), " (",
              Link("docs/statistics.md", "../docs/statistics.md"), ", \"The noise sweep\")."),
        _para(Bold("How good must the labels be? "), "Least squares of the gain on the labels' quality over the "
              "methods' own rows (not the fusions), 95% intervals from a bootstrap over layouts and training seeds "
              "that refits the line on every resample: ",
              "; ".join(f"on {fit['x_label']}: {fit.get('words', fit.get('note', ''))}" for fit in fits.values()),
              ". Label quality is measured once, on the whole dataset: its own sampling error is not in the intervals."),
        Table(("noise-free - default level", "difference in completion [95% interval]", "Holm p", "verdict"),
              tuple((Code(e["row"]), _difference_text(e), f"{e['p_holm']:.3g}" if e["p_holm"] >= 1e-3 else "< 0.001",
                     e["verdict"])
                    for e in sweep["noise_effect"])),
        Table(("row", "noise level", "Spearman", "AUROC", "VOC", "gain over sparse [95% interval]", "verdict"),
              tuple((Code(g["row"]), g["level"], _number(g.get("spearman_progress")), _number(g.get("auroc_completion")),
                     _number(g.get("voc")), _difference_text(g), g["verdict"]) for g in sweep["gains"])),
        _para(f"The family decided with Holm's correction: {sweep['family']}; a difference is resolved (above, below) "
              f"when its adjusted p-value is below {ALPHA} and its 95% interval excludes 0, else not resolved."),
        *figure("noise_sweep.png", "tuning", NOISE_SWEEP_CAPTION),
    ]
    return blocks


def _chaining_blocks(chaining: dict[str, list[dict]], policy: str, split: str) -> list[Block]:
    table = chaining_table(chaining, policy, split)
    if table is None:
        return []
    return [_heading(3, f"Where the policies stop ({policy} policy, {split} split)"),
            _para("Success of a sub-task once every earlier one was done, pooled over k, training seeds and layouts, "
                  "per kind (open a door; put an object next to another) and per position in the mission; in "
                  "brackets the number of episodes that reached it. Read from each episode's mission and how many "
                  "of its sub-tasks the level's verifier counted done. Source: ",
                  Code("reports/metrics/evaluation.json"), " (", Code("chaining"), ")."),
            table]


def report_blocks(metrics_dir: Path = paths.METRICS, reports_dir: Path = paths.REPORTS,
                  headline: str = "sparse+rg_vlm@1", split: str = "fresh",
                  policy: str | None = None) -> tuple[str, list[Block]]:
    """The report's title and blocks, read from the metrics files under ``metrics_dir`` and the
    figures, tuning results and notebooks under ``reports_dir``. ``headline`` is the fusion drawn
    in Figure 4 left and checked in the claims; ``split`` the split they use; ``policy`` the
    evaluation policy of the figures and claims (default: the first evaluated). Every figure
    stands after the text that introduces it, with a caption (:func:`figure_captions`)."""
    evaluation = json.loads((metrics_dir / "evaluation.json").read_text())
    card = json.loads((metrics_dir / "dataset.json").read_text())
    all_policies = pd.DataFrame(evaluation["summary"])
    policies = list(evaluation["provenance"].get("policies", {"greedy": "greedy"}))
    policy = policy or policies[0]
    summary = all_policies[all_policies["policy"] == policy] if "policy" in all_policies else all_policies
    reward_sets = evaluation["provenance"]["reward_sets"]
    title = provenance_title(reward_sets)
    figures = sorted(p.name for p in (reports_dir / "figures").glob("*.png"))
    intervals = (set(summary["interval"]) if "interval" in summary else set()) or {"seeds x episodes"}
    interval_words = ("training seeds and layouts" if intervals == {"seeds x layouts"} else
                      "training seeds and episodes")
    captions = figure_captions(policy, split, headline, policies, interval_words)
    placed: list[str] = []

    def figure(name: str, folder: str = "figures", caption: str | None = None) -> list[Block]:
        """The figure with its caption, if the report stage drew it."""
        if folder == "figures" and name not in figures:
            return []
        placed.append(name)
        return [Figure(f"{folder}/{name}", name, caption or captions.get(name, name))]

    notebooks = sorted(p.name for p in (reports_dir / "notebooks").glob("*.html"))
    blocks: list[Block] = [_heading(1, "rgvlm report"), _para(Bold(title))]
    if any(lvlm_label(p).startswith("scripted") for p in reward_sets.values()):
        blocks.append(_para("Labels made by the ", Bold("scripted annotator"), ": answers computed from the "
                            "dataset's privileged ground truth with configured noise. It is not an LVLM.", note=True))
    described = evaluation["provenance"].get("policies", {policy: policy})
    blocks += [
        _para("IQL and the baselines, trained on each reward, rolled out on tasks of k sub-tasks. Figures and the "
              "claims below use the ", Bold(policy), f" evaluation policy ({described.get(policy, policy)}) on the ",
              Bold(split), " split; the tables show every evaluated policy. Every mean is over training seeds, with "
              f"a 95% bootstrap interval over {interval_words}; differences between rows are paired by layout "
              "(each row met the same layouts) and decided with Holm's correction (",
              Link("docs/statistics.md", "../docs/statistics.md"), ")."),
        _para("Evaluation seeds: " + _evaluation_seeds(evaluation["provenance"].get("evaluation", {}))),
        _heading(2, "Figure 4: completion, sub-tasks done and full-task success by number of sub-tasks"),
        _para("Figure 4 left draws every row: Sparse, the headline fusion ", Code(headline), ", RG-VLM alone, the "
              "comparison methods, the baselines that use no reward model and the oracle, with the dataset's own "
              "episodes as a reference line. Beside the proportion of sub-tasks completed (the paper's measure) "
              "stand the mean number of sub-tasks done and the full-task success rate, so that a proportion that "
              "falls with k can be told from policies that stop after a fixed number of sub-tasks. The instance "
              "of the suite: " + instance_text(evaluation["provenance"].get("dataset", {}).get("env", {})) + "."),
        *figure("fig4_left.png"),
        *(block for name in policies if name != policy for block in figure(f"fig4_left_{name}.png")),
        *_chaining_blocks(evaluation.get("chaining", {}), policy, split),
        _para("Figure 4 right is the fusion ablation: the sparse reward plus lambda times RG-VLM's dense reward, "
              "for each lambda, beside either alone."),
        *figure("fig4_right.png"),
    ]
    paired = pd.DataFrame(evaluation.get("paired", []))
    family = report_family(paired, policy if "policy" in paired else None, split)
    blocks.append(_heading(2, f"Does the paper's story hold here? ({policy} policy, {split} split)"))
    if family.empty:
        blocks.append(_para("evaluation.json holds no paired differences for this policy and split (it was written "
                            "before the paired statistics): no claim is decided here. Rerun the evaluate stage."))
    else:
        kinds = ", ".join(dict.fromkeys(family["kind"]))
        ks = sorted(int(k) for k in family["k"].unique())
        blocks += [
            _para(f"Each claim is read from paired differences in completion: row minus reference on the same "
                  "layouts, 95% interval from a bootstrap that draws the layouts once for both rows and each row's "
                  f"training seeds on its own. The family tested is every difference in the table below: {kinds}, "
                  f"at k = {', '.join(map(str, ks))} ({len(family)} tests). A difference is resolved when Holm's "
                  f"adjusted p-value (normal approximation with the bootstrap standard error) is below {ALPHA} AND "
                  "its 95% interval excludes 0; otherwise it is \"not resolved\" (n.r.)."),
            Bullets(tuple((line,) for line in story(family, headline, split))),
            _heading(3, f"Paired differences in completion ({policy} policy, {split} split)"),
            paired_table(family),
            _para("Cells: difference [95% interval], then the verdict after Holm's correction over the family (above, "
                  "below, n.r. = not resolved). Source: ", Code("reports/metrics/evaluation.json"), " (", Code("paired"),
                  "), computed from ", Code(f"reports/metrics/{PER_LAYOUT_FILE}"), ", one line per (policy, row, "
                  "split, k, layout) with the mean over training seeds and each seed's value; recompute with:"),
            Preformatted("import pandas as pd\nfrom rgvlm.evaluation.paired import decide, paired_differences, "
                         "records_from_per_layout\n"
                         f"cells = records_from_per_layout(pd.read_csv('reports/metrics/{PER_LAYOUT_FILE}'))\n"
                         "paired = paired_differences(cells, samples=2000, seed=0)  # evaluation.bootstrap_samples, "
                         "evaluation.seed\n"
                         f"family = paired[(paired.policy == '{policy}') & (paired.split == '{split}')]\n"
                         "print(decide(family.reset_index(drop=True)))", "python"),
            *figure("paired_differences.png"),
        ]
    blocks += [_heading(2, "Seen layouts and fresh seeds"),
               _para("The same rows on layouts seen in the dataset and on fresh seeds (the paper's randomised initial "
                     "states), completion pooled over k, then full-task success per k on both splits."),
               *figure("generalisation.png"), *figure("success_by_k.png")]
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
                                   f"[95% bootstrap interval over {interval_words}]"),
                       results_table(rows, metric)]
    seeds = sorted(summary["num_seeds"].unique()) if not summary.empty else [0]
    episodes = int((summary["num_episodes"] / summary["num_seeds"]).max()) if not summary.empty else 0
    blocks.append(_para(f"{' or '.join(map(str, seeds))} training seeds per row; up to {episodes} evaluation "
                        "episodes per (run, split, k). Source: ", Code("reports/metrics/evaluation.json"), "."))
    sweep_path = reports_dir / "tuning" / "noise_sweep.json"
    if sweep_path.exists():
        blocks += noise_sweep_blocks(json.loads(sweep_path.read_text()), figure)
    training_path = metrics_dir / "training.csv"
    if training_path.exists():
        critic = critic_table(pd.read_csv(training_path))
        blocks += [_heading(2, "Did each critic learn? (held-out episodes, last probe)"),
                   _para("The training curves and the critic diagnostic over the updates, then the diagnostic at the "
                         "last probe per row."),
                   *figure("training_curves.png"), *figure("critic_diagnostic.png"),
                   critic or _para("No critic diagnostic was logged (train.holdout_fraction is 0)."),
                   _para(Code("v_return_corr"), ": correlation of V(s) with the Monte-Carlo discounted return of the "
                         "row's own reward on episodes held out from training (about 0: the critic learned nothing); ",
                         Code("v_return_corr_success"), ": the same on the held-out episodes that succeeded, where "
                         "the data's return is near the best one that IQL's V estimates (a fitted critic scores near "
                         "1 there). ", Code("adv_weight_gt2"), " / ", Code("adv_weight_p90"), " / ",
                         Code("adv_weight_p10"), ": share of advantage weights exp(beta A) above 2, and their 90th and "
                         "10th percentiles (all about 1: IQL's policy step is behaviour cloning; a low 10th "
                         "percentile: the critic discounts some of the data's actions). BC rows' critics train on the sparse reward and do not steer their "
                         "policies. Source: ", Code("reports/metrics/training.csv"), ".")]
    quality_path = metrics_dir / "label_quality.json"
    if quality_path.exists():
        quality = json.loads(quality_path.read_text())
        blocks += [_heading(2, "Label quality: agreement with the privileged ground truth, and VOC without it"),
                   _para("How well each method's labels follow the task's progress, as a figure and as a table."),
                   *figure("label_quality.png"),
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
    verification = vlm_car_table(metrics_dir)
    if verification:
        blocks += [_heading(3, "VLM-CaR's verification"),
                   _para("VLM-CaR checks its own programs (expert trajectories must be completed, random rollouts "
                         "must not be) and regenerates a failing one with the failure fed back; what its checks "
                         "cannot see stays in its labels. With the scripted annotator its decompositions and programs "
                         "are wrong in an LVLM's ways at the ", Code("misattribution"), " rate (docs/methods.md, "
                         "\"The scripted annotator's noise, per method\"). Source: ",
                         Code("reports/metrics/labelling_vlm_car.json"), "."),
                   verification]
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
    rest = [name for name in figures if name not in placed]
    if rest:  # a figure the report stage drew that no section introduces: still shown, with its caption
        blocks += [_heading(2, "Other figures"), _para("Figures of the report stage not introduced above.")]
        blocks += [block for name in rest for block in figure(name)]
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
