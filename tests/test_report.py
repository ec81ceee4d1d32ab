"""reports/README.md is the same report as reports/index.html: both are rendered from one list of
blocks (rgvlm.report), so a repository browser shows the same text, tables and figures. Each
Markdown file is read back through a CommonMark parser with GitHub's tables, and what a reader
would see is compared with what the HTML shows (tests/report_pages.py)."""

from __future__ import annotations

import json
import string
from pathlib import Path

from hypothesis import example, given, settings
from hypothesis import strategies as st

from rgvlm.params import load_params
from rgvlm.report import (
    Bullets,
    Code,
    Figure,
    Heading,
    Para,
    Table,
    chaining_table,
    figure4_left_reward_sets,
    figure4_metrics,
    figure4_right_reward_sets,
    render_html,
    render_markdown,
)
from rgvlm.rewards import fused_name
from tests.report_pages import assert_same_report

ROOT = Path(__file__).resolve().parent.parent


def test_readme_shows_what_index_html_shows(rendered_report):
    page, readme = assert_same_report((rendered_report / "index.html").read_text(),
                                      (rendered_report / "README.md").read_text())
    # Every number of Figure 4's tables, as the metrics hold it, and every figure, linked relatively.
    cells = {cell for table in readme.tables for row in table for cell in row}
    evaluation = json.loads((ROOT / "reports" / "metrics" / "evaluation.json").read_text())
    for row in evaluation["summary"]:
        for metric in ("completion", "success"):
            assert f"{row[f'{metric}_mean']:.3f} [{row[f'{metric}_low']:.3f}, {row[f'{metric}_high']:.3f}]" in cells
    figures = sorted(f"figures/{p.name}" for p in (rendered_report / "figures").glob("*.png"))
    assert sorted(readme.images) == sorted([*figures, "tuning/noise_sweep.png"])
    assert all((rendered_report / src).is_file() for src in readme.images)
    assert {"sparse", "rg_vlm", "bc", "bc_success", "d3rlpy_bc", "d3rlpy_cql", "oracle"} <= {
        row[0] for row in readme.tables[0][1:]}  # the baselines' and the d3rlpy peer's rows too
    headings = [line for line in (rendered_report / "README.md").read_text().splitlines() if line.startswith("#")]
    for wanted in ("Label quality", "VLM-CaR's verification", "Labelling cost", "Did each critic learn", "Provenance", "Dataset card",
                   "Reward-set parameters", "Training and evaluation parameters"):
        assert any(wanted in h for h in headings), wanted
    assert "scripted annotator (privileged ground truth + noise; not an LVLM)" in readme.text
    # VLM-CaR's verification at work, as its labelling metrics count it.
    car = json.loads((ROOT / "reports" / "metrics" / "labelling_vlm_car.json").read_text())["cost"]
    verification = next(t for t in readme.tables if t[0] == ["VLM-CaR verification", "count"])
    assert ["programs regenerated after a failed check", str(car["regenerations"])] in verification
    assert ["sub-tasks dropped (no program passed)", str(car["failed_programs"])] in verification
    # The noise sweep trains its own runs: the report states how, so they are not read as the default run's.
    sweep = json.loads((ROOT / "reports" / "tuning" / "noise_sweep.json").read_text())
    assert (f"{len(sweep['training_seeds'])} training seeds, {sweep['iql_num_steps']:,} IQL updates per run, "
            f"{sweep['episodes_per_k']} fresh episodes per k, {sweep['policy']} policy") in readme.text


def test_figure4_metrics_are_figure4s_rows_of_the_evaluation_summary():
    """reports/figure4.json (what `dvc exp show` lists) holds, for the report's split and policy, the
    completion rows of evaluation.json of every reward set Figure 4 draws, unchanged."""
    import pandas as pd

    report = load_params(ROOT / "params.yaml")["report"]
    summary = pd.DataFrame(json.loads((ROOT / "reports" / "metrics" / "evaluation.json").read_text())["summary"])
    headline = fused_name("rg_vlm", float(report["headline_lambda"]))
    metrics = figure4_metrics(summary, headline, report["split"], report["policy"])
    assert list(metrics) == [report["split"]] and list(metrics[report["split"]]) == [report["policy"]]
    table = metrics[report["split"]][report["policy"]]
    reward_sets = sorted(summary["reward_set"].unique())
    assert set(table) == {*figure4_left_reward_sets(reward_sets, headline), *figure4_right_reward_sets(reward_sets)}
    rows = summary[(summary["split"] == report["split"]) & (summary["policy"] == report["policy"])]
    for reward_set, by_k in table.items():
        assert set(by_k) == {f"k{k}" for k in rows[rows["reward_set"] == reward_set]["k"]}
        for key, cell in by_k.items():
            row = rows[(rows["reward_set"] == reward_set) & (rows["k"] == int(key[1:]))].iloc[0]
            assert cell == {name: row[name] for name in ("completion_mean", "completion_low", "completion_high")}
    assert json.loads((ROOT / "reports" / "figure4.json").read_text()) == metrics  # the committed file


def test_chaining_table_reads_success_once_reached_per_kind_and_position():
    from rgvlm.evaluation.chaining import chaining_tables, subtask_outcomes

    put = "put the red ball next to the blue key"
    mission = f"open the red door, then {put}"
    # sparse: 2 episodes finish both clauses, 1 stops at the put, 1 at the door; oracle: all done.
    records = [{"k": 2, "seed": i, "mission": mission, "progress": p, "reward_set": "sparse", "policy": "sampled",
                "split": "fresh"} for i, p in enumerate([2, 2, 1, 0])]
    records += [{**r, "reward_set": "oracle", "progress": 2} for r in records]
    records += [{**r, "split": "seen", "progress": 0} for r in records]  # another split: not in the table
    keys = ["policy", "reward_set", "split"]
    chaining = {name: t.to_dict("records") for name, t in
                chaining_tables(subtask_outcomes(records, keys=tuple(keys)), keys).items()}
    table = chaining_table(chaining, "sampled", "fresh")
    assert table.header == ("reward", "open sub-tasks", "put sub-tasks", "position 1", "position 2")
    rows = {row[0].text: row[1:] for row in table.rows}
    assert list(rows) == ["sparse", "oracle"]
    # sparse: the door reached 4 times, done 3; the put reached 3 times, done 2.
    assert rows["sparse"] == ("0.75 (4)", "0.67 (3)", "0.75 (4)", "0.67 (3)")
    assert rows["oracle"] == ("1.00 (4)", "1.00 (4)", "1.00 (4)", "1.00 (4)")
    assert chaining_table({}, "sampled", "fresh") is None  # evaluation.json from before the tables


def test_the_committed_readme_is_the_committed_index_html():
    assert_same_report((ROOT / "reports" / "index.html").read_text(), (ROOT / "reports" / "README.md").read_text())


TEXT = st.text(string.ascii_letters + string.digits + string.punctuation + " ", min_size=1, max_size=24)


@settings(max_examples=300, deadline=None)
@given(text=TEXT, code=TEXT)
@example(text="1. a list?", code="a|b")
@example(text="# a heading? #", code="`tick`")
@example(text="# ", code="0")  # a "#" and a trailing space: still the closing sequence of a heading
@example(text="- an item?", code=" x ")
@example(text="---", code="__init__")
@example(text="> a quote?", code="*")
@example(text="    code block?", code="0")
@example(text="sparse+rg_vlm@0.5 _x_ *y* [l](u) <b> &amp; ~~s~~", code="sparse+rg_vlm@0.5")
def test_any_text_reads_the_same_in_markdown_and_html(text, code):
    """Markdown's punctuation in a reward-set name or a description (``*``, ``_``, ``|``, ``#``, ``[``,
    ``1.`` ...) never turns into emphasis, links, lists or extra table columns."""
    blocks = [Heading(2, (text,)), Para((text, Code(code), text)), Para((text,), note=True), Bullets(((text,),)),
              Table((text, "k=1"), ((Code(code), text), (text, code))), Figure("figures/a.png", text, text)]
    assert_same_report(render_html("title", blocks), render_markdown("title", blocks))


def test_claims_come_from_paired_differences_with_holm(tmp_path):
    """With paired differences in evaluation.json (issue 30), the claims and the paired table are
    read from them, decided with Holm over the stated family; every figure stands after text,
    with a caption that is not its file name."""
    import shutil

    import pandas as pd

    from rgvlm.report import build_report

    metrics = tmp_path / "metrics"
    shutil.copytree(ROOT / "reports" / "metrics", metrics)
    shutil.copytree(ROOT / "reports" / "figures", tmp_path / "out" / "figures")
    evaluation = json.loads((metrics / "evaluation.json").read_text())
    paired = []
    for k in (1, 2, 3):
        for row, reference, kind, difference, p in (
                ("oracle", "sparse", "row - sparse", 0.2, 1e-8), ("rg_vlm", "sparse", "row - sparse", 0.02, 0.3),
                ("sparse+rg_vlm@1", "sparse", "row - sparse", 0.05, 0.01),
                ("sparse+rg_vlm@1", "rg_vlm", "fusion - rg_vlm", 0.03, 0.2), ("oracle", "bc", "row - bc", 0.1, 1e-5)):
            paired.append({"policy": "sampled", "split": "fresh", "k": k, "row": row, "reference": reference,
                           "kind": kind, "measure": "completion", "difference": difference,
                           "low": difference - 0.04, "high": difference + 0.04, "se": 0.02, "p": p})
    evaluation["paired"] = paired
    (metrics / "evaluation.json").write_text(json.dumps(evaluation))
    page, readme = build_report(metrics, tmp_path / "out", headline="sparse+rg_vlm@1", split="fresh", policy="sampled")
    assert_same_report(page, readme)
    assert "Holm" in page and "(15 tests)" in page
    assert "resolved above 0 at k in [1, 2, 3] and below at k in none (Holm over 15 tests)" in page
    # sparse+rg_vlm@1 - sparse at p = 0.01 clears 0 but not Holm over 15 tests: not resolved.
    assert "resolved above both at k in none (not resolved at any k)" in page
    table = pd.DataFrame(paired)
    assert len(table) == 15 and "<td>+0.200 [+0.160, +0.240] above</td>" in page and "n.r.</td>" in page
    assert "reset seeds 2,000,000,000 to 2,000,000,099" in page and "used only to report" in page
    assert page.count("<figure>") == page.count("<figcaption>")
    assert "<figcaption>fig4_left.png</figcaption>" not in page
    assert page.index("<figure>") > page.index("Evaluation seeds")
