"""The README's headline numbers, generated from the committed report's metrics.

``README.md`` holds one block between :data:`START` and :data:`END` that nobody types: a small
table of the mean sub-tasks done per k for the report's policy and split (``params.yaml``
``report:``), read from ``reports/metrics/evaluation.json``, and who made the labels. The report
is the one source; this block follows it.

    python -m rgvlm.readme           # rewrite the block in README.md (atomically)
    python -m rgvlm.readme --check   # exit 1, naming the difference, if the block is stale

(``make readme`` runs the first; ``tests/test_readme.py`` runs the second's check.)
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from rgvlm import paths
from rgvlm.atomic import write_bytes_atomic
from rgvlm.params import load_params
from rgvlm.plots import _with_subtasks
from rgvlm.report import lvlm_label
from rgvlm.rewards.fusion import fused_name
from rgvlm.rewards.registry import PAPER_METHOD

README = paths.ROOT / "README.md"
START = "<!-- headline:start -->"
END = "<!-- headline:end -->"

#: What each headline row is, in a few words (the rows are the report's reward sets and a baseline).
ROW_NOTES = {
    "sparse": "the task's own reward, 1 when the whole mission is done",
    "oracle": "a perfect dense reward, 1 per sub-task completed (privileged; the upper reference)",
    PAPER_METHOD: "RG-VLM's per-action labels alone",
    "bc": "behaviour cloning on every dataset action, no reward",
}


def headline_rows(headline_lambda: float) -> list[str]:
    """The reward sets the README shows, in order: sparse, oracle, RG-VLM, the headline fusion, BC."""
    return ["sparse", "oracle", PAPER_METHOD, fused_name(PAPER_METHOD, headline_lambda), "bc"]


def _evaluation(metrics_dir: Path) -> dict[str, Any]:
    path = Path(metrics_dir) / "evaluation.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no evaluation metrics, so the README's headline cannot be generated; "
            "run the pipeline's `evaluate` stage (make reproduce) first"
        )
    return json.loads(path.read_text())


def _labelled_by(provenance: dict[str, Any], rows: list[str]) -> str:
    """Who made the labels of the rows that have any, in words (the report's own wording)."""
    reward_sets = provenance.get("reward_sets", {})
    labels = sorted({lvlm_label(reward_sets[r]) for r in rows if r in reward_sets and reward_sets[r].get("lvlm")})
    if not labels:
        return "no LVLM labels among these rows"
    words = "; ".join(labels)
    if any(label.startswith("scripted") for label in labels):
        return f"**{words}**. These numbers are not an LVLM's: see [using a real LVLM](#using-a-real-lvlm)"
    return words


def headline_markdown(metrics_dir: str | Path = paths.METRICS, params_path: str | Path = paths.PARAMS) -> str:
    """The README's headline block (without its markers): mean sub-tasks done (completion x k) per k,
    with 95% intervals, of sparse, the oracle, RG-VLM, the headline fusion and BC, for the report's
    policy and split, read from ``<metrics_dir>/evaluation.json``; and who made the labels."""
    report = load_params(params_path).get("report", {})
    policy, split = report.get("policy", "sampled"), report.get("split", "fresh")
    lam = float(report.get("headline_lambda", 1.0))
    rows = headline_rows(lam)
    evaluation = _evaluation(Path(metrics_dir))
    summary = pd.DataFrame(evaluation.get("summary", []))
    if summary.empty:
        raise ValueError(f"{Path(metrics_dir) / 'evaluation.json'}: no `summary` records")
    summary = _with_subtasks(summary[(summary["policy"] == policy) & (summary["split"] == split)])
    if summary.empty:
        raise ValueError(
            f"{Path(metrics_dir) / 'evaluation.json'}: no summary records for policy "
            f"{policy!r} on split {split!r} (params.yaml `report:`)"
        )
    ks = sorted(int(k) for k in summary["k"].unique())
    lines = [
        f"Mean sub-tasks done (completion x k) out of k, {policy} policy, {split} split, mean over training "
        "seeds [95% interval]:",
        "",
        "| reward set | seeds | " + " | ".join(f"k={k}" for k in ks) + " |",
        "| :-- | --: | " + " | ".join("--:" for _ in ks) + " |",
    ]
    notes = []
    for row in rows:
        cells = summary[summary["reward_set"] == row].set_index("k")
        if cells.empty:
            continue
        seeds = int(cells["num_seeds"].max()) if "num_seeds" in cells else "?"
        values = [
            f"{cells.at[k, 'subtasks_mean']:.2f} [{cells.at[k, 'subtasks_low']:.2f}, {cells.at[k, 'subtasks_high']:.2f}]"
            if k in cells.index
            else "–"
            for k in ks
        ]
        lines.append(f"| `{row}` | {seeds} | " + " | ".join(values) + " |")
        notes.append(f"`{row}`: " + ROW_NOTES.get(row, f"sparse + {lam:g} x RG-VLM, the headline fusion"))
    lines += [
        "",
        "; ".join(notes) + ".",
        "",
        "Labels by: " + _labelled_by(evaluation.get("provenance", {}), rows) + ".",
        "",
        "*Generated by `python -m rgvlm.readme` (`make readme`) from `reports/metrics/evaluation.json`; "
        "do not edit. Every row, policy and split, with success rates: [`reports/README.md`](reports/README.md).*",
    ]
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    """``text`` with the part between :data:`START` and :data:`END` replaced by ``block``."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise ValueError(
            f"README: expected one {START} ... {END} block, found start at {start}, end at {end} (-1: missing)"
        )
    if text.find(START, start + 1) >= 0 or text.find(END, end + 1) >= 0:
        raise ValueError(f"README: more than one {START} ... {END} block")
    return text[: start + len(START)] + "\n" + block + "\n" + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1, naming the difference, if the block is stale")
    parser.add_argument("--readme", type=Path, default=README)
    parser.add_argument("--metrics", type=Path, default=paths.METRICS)
    parser.add_argument("--params", type=Path, default=paths.PARAMS)
    args = parser.parse_args(argv)
    text = args.readme.read_text()
    new = replace_block(text, headline_markdown(args.metrics, args.params))
    if new == text:
        print(f"{args.readme}: headline block up to date")
        return 0
    if args.check:
        diff = difflib.unified_diff(
            text.splitlines(),
            new.splitlines(),
            "README.md (committed)",
            "README.md (generated from the metrics)",
            lineterm="",
            n=0,
        )
        print(
            f"{args.readme}: the headline block differs from {args.metrics / 'evaluation.json'}; "
            "run `make readme`:\n" + "\n".join(diff),
            file=sys.stderr,
        )
        return 1
    write_bytes_atomic(args.readme, new.encode("utf-8"))
    print(f"{args.readme}: headline block rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
