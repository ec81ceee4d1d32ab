"""Figures, drawn from the metrics files only (never from numbers typed in)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

SPLIT_TITLES = {"seen": "layouts seen in the dataset", "fresh": "fresh seeds (randomised initial states)"}
METRIC_LABELS = {"completion": "proportion of sub-tasks completed", "success": "full-task success rate"}


def wrap(title: str, width: int = 100) -> str:
    """Long provenance titles on several lines instead of clipped."""
    import textwrap

    return "\n".join(textwrap.fill(line, width) for line in title.split("\n"))


def reward_set_order(reward_sets: list[str]) -> list[str]:
    """Sparse first, the oracle last (it is a reference), the rest alphabetically between."""
    rest = sorted(m for m in reward_sets if m not in ("sparse", "oracle"))
    return [m for m in ("sparse",) if m in reward_sets] + rest + [m for m in ("oracle",) if m in reward_sets]


def metric_by_k(summary: pd.DataFrame, metric: str, title: str, reward_sets: list[str] | None = None,
                splits: list[str] | None = None) -> plt.Figure:
    """Mean ``metric`` against k per reward set, one panel per split, 95% intervals.

    ``summary`` is the table of :func:`rgvlm.evaluation.summarize`; ``reward_sets`` (in that
    order) and ``splits`` select what is drawn (default: everything).
    """
    sns.set_theme(style="whitegrid", context="notebook")
    reward_sets = [m for m in (reward_sets or reward_set_order(sorted(summary["reward_set"].unique())))
                   if m in set(summary["reward_set"])]
    splits = [s for s in SPLIT_TITLES if s in set(summary["split"]) and (splits is None or s in splits)]
    palette = dict(zip(reward_sets, sns.color_palette("colorblind", len(reward_sets)), strict=True))
    fig, axes = plt.subplots(1, len(splits), figsize=(5.5 * len(splits), 4.2), sharey=True, squeeze=False)
    for ax, split in zip(axes[0], splits, strict=True):
        for offset, reward_set in enumerate(reward_sets):
            rows = summary[(summary["split"] == split) & (summary["reward_set"] == reward_set)].sort_values("k")
            if rows.empty:
                continue
            x = rows["k"] + (offset - (len(reward_sets) - 1) / 2) * 0.06  # dodge overlapping bars
            mean = rows[f"{metric}_mean"]
            err = [mean - rows[f"{metric}_low"], rows[f"{metric}_high"] - mean]
            style = "--" if reward_set == "oracle" else "-"
            ax.errorbar(x, mean, yerr=err, label=reward_set, color=palette[reward_set], linestyle=style, marker="o", capsize=3)
        ax.set_title(SPLIT_TITLES[split])
        ax.set_xlabel("number of sub-tasks k")
        ax.set_xticks(sorted(summary["k"].unique()))
        ax.set_ylim(-0.02, 1.02)
    axes[0][0].set_ylabel(METRIC_LABELS[metric])
    axes[0][-1].legend(title="reward", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    fig.suptitle(wrap(title), fontsize="medium")
    fig.tight_layout()
    return fig


def generalisation_bars(overall: pd.DataFrame, metric: str, title: str) -> plt.Figure:
    """Seen layouts vs fresh seeds per reward set, pooled over k, with 95% intervals."""
    sns.set_theme(style="whitegrid", context="notebook")
    reward_sets = reward_set_order(sorted(overall["reward_set"].unique()))
    splits = [s for s in SPLIT_TITLES if s in set(overall["split"])]
    fig, ax = plt.subplots(figsize=(max(7.0, 1.1 * len(reward_sets) + 2), 4.2))
    width = 0.8 / len(splits)
    colours = sns.color_palette("colorblind", len(splits))
    for i, split in enumerate(splits):
        rows = overall[overall["split"] == split].set_index("reward_set").reindex(reward_sets)
        x = [j + (i - (len(splits) - 1) / 2) * width for j in range(len(reward_sets))]
        mean = rows[f"{metric}_mean"]
        err = [mean - rows[f"{metric}_low"], rows[f"{metric}_high"] - mean]
        ax.bar(x, mean, width, yerr=err, capsize=3, label=SPLIT_TITLES[split], color=colours[i])
    ax.set_xticks(range(len(reward_sets)), reward_sets, rotation=30, ha="right")
    ax.set_ylabel(f"{METRIC_LABELS[metric]}\n(all k pooled)")
    ax.legend(fontsize="small")
    fig.suptitle(wrap(title), fontsize="medium")
    fig.tight_layout()
    return fig


def training_curves(log: pd.DataFrame, columns: list[str], title: str) -> plt.Figure:
    """Training metrics against update step, mean over seeds with a band, per reward set."""
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(1, len(columns), figsize=(4.2 * len(columns), 3.6), squeeze=False)
    for ax, column in zip(axes[0], columns, strict=True):
        sns.lineplot(data=log, x="step", y=column, hue="reward_set", ax=ax, errorbar=("pi", 100),
                     hue_order=reward_set_order(sorted(log["reward_set"].unique())))
        ax.set_title(column)
        if ax is not axes[0][-1]:
            ax.get_legend().remove()
    fig.suptitle(wrap(title), fontsize="medium")
    fig.tight_layout()
    return fig


def label_quality_bars(quality: dict, title: str) -> plt.Figure:
    """Each reward set's agreement with ground-truth progress (Spearman, AUROC: privileged ground
    truth) and its VOC on the expert episodes (no ground truth; a file without it draws none)."""
    sns.set_theme(style="whitegrid", context="notebook")
    reward_sets = reward_set_order(list(quality))
    measures = (("spearman_progress", "Spearman with progress (ground truth)"),
                ("auroc_completion", "AUROC: step completed a sub-task (ground truth)"),
                ("voc", "VOC on expert episodes (no ground truth)"))
    frame = pd.DataFrame(
        [{"reward": m, "metric": label, "value": quality[m][key]}
         for m in reward_sets for key, label in measures
         if isinstance(quality[m].get(key), (int, float)) and quality[m][key] == quality[m][key]]  # not NaN
    )
    fig, ax = plt.subplots(figsize=(max(8.0, 1.6 * len(reward_sets)), 4.2))
    sns.barplot(data=frame, x="reward", y="value", hue="metric", ax=ax)
    low = float(frame["value"].min()) if len(frame) else 0.0
    ax.set_ylim(min(0.0, low - 0.05), 1.05)  # VOC and Spearman may be negative
    ax.axhline(0.0, color="black", linewidth=0.8)
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")  # long fusion names
    ax.set_xlabel("")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    fig.suptitle(wrap(title), fontsize="medium")
    fig.tight_layout()
    return fig


def save_figure(fig: plt.Figure, path) -> None:
    """Save as PNG with a fixed DPI and no timestamp metadata, then close."""
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, metadata={"Software": None})
    tmp.replace(path)
    plt.close(fig)


def reward_by_completion(rewards, completes, title: str) -> plt.Figure:
    """A labelling diagnostic (privileged ground truth, never seen by the learner): the reward of
    the steps that complete a sub-task against all the others. A useful reward separates them."""
    frame = pd.DataFrame({"reward": rewards,
                          "step": pd.Categorical(["completes a sub-task" if c else "other" for c in completes])})
    fig, ax = plt.subplots(figsize=(6, 3))
    sns.boxplot(data=frame, x="reward", y="step", ax=ax, showfliers=False)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
