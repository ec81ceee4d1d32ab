"""Every path the pipeline reads or writes, relative to the repository root."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARAMS = ROOT / "params.yaml"
DVC_YAML = ROOT / "dvc.yaml"
NOTEBOOKS = ROOT / "notebooks"
#: The LVLM prompt templates (editable; their text is part of every cache key).
PROMPTS = ROOT / "prompts"

#: The offline dataset (tracked by data.dvc). Immutable once built.
DATA = ROOT / "data"

#: Stage outputs cached by DVC (never inside data/: DVC refuses overlapping outputs).
OUTPUTS = ROOT / "outputs"
LABELS = OUTPUTS / "labels"  # LVLM-made reward sets (the labelling stage)
LVLM_CACHE = OUTPUTS / "lvlm_cache"  # every LVLM answer, content-addressed
REWARDS = OUTPUTS / "rewards"
MODELS = OUTPUTS / "models"
EVALUATION = OUTPUTS / "evaluation"
PEER = OUTPUTS / "peer"  # the d3rlpy baselines' evaluation episodes

#: What a reader sees without running anything (committed to git).
REPORTS = ROOT / "reports"
REPORT_NOTEBOOKS = REPORTS / "notebooks"
FIGURES = REPORTS / "figures"
METRICS = REPORTS / "metrics"
BENCHMARKS = REPORTS / "benchmarks"
INDEX_HTML = REPORTS / "index.html"
REPORT_README = REPORTS / "README.md"  # the same report in Markdown, for a repository browser
#: Figure 4's numbers for the report's split and policy (rgvlm.report.figure4_metrics): what `dvc exp show` lists.
FIGURE4 = REPORTS / "figure4.json"
