"""The dataset card: what the offline dataset holds, per number of sub-tasks k."""

from __future__ import annotations

import pandas as pd

from rgvlm.data.storage import OfflineDataset
from rgvlm.params import MIXTURE_KINDS


def episode_table(dataset: OfflineDataset) -> pd.DataFrame:
    """One row per episode (no arrays)."""
    return pd.DataFrame(dataset.episodes).drop(columns=["subtasks"])


def dataset_card(dataset: OfflineDataset) -> dict:
    """Episodes and transitions per k, mixture shares, lengths and success, as plain data."""
    episodes = episode_table(dataset)
    # The kinds the manifest's mixture lists (a kind added later appears only where it is used).
    recorded = (dataset.manifest.get("dataset") or {}).get("mixture") or MIXTURE_KINDS
    kinds = [kind for kind in MIXTURE_KINDS if kind in recorded]
    per_k = []
    for k, group in episodes.groupby("k", sort=True):
        row = {
            "k": int(k),
            "episodes": len(group),
            "transitions": int(group["length"].sum()),
            "mean_length": round(float(group["length"].mean()), 2),
            "max_length": int(group["length"].max()),
            "success_rate": round(float(group["success"].mean()), 4),
            "mean_completion": round(float((group["final_progress"] / k).mean()), 4),
        }
        for kind in kinds:
            of_kind = group[group["kind"] == kind]
            row[f"share_{kind}"] = round(len(of_kind) / len(group), 4)
            row[f"success_{kind}"] = round(float(of_kind["success"].mean()), 4) if len(of_kind) else None
            row[f"mean_length_{kind}"] = round(float(of_kind["length"].mean()), 2) if len(of_kind) else None
        per_k.append(row)
    return {
        "episodes": len(episodes),
        "transitions": int(episodes["length"].sum()),
        "distinct_missions": int(episodes["mission"].nunique()),
        "success_rate": round(float(episodes["success"].mean()), 4),
        "bot_failures": dataset.manifest.get("bot_failures"),
        "parameters": {"env": dataset.manifest.get("env"), "dataset": dataset.manifest.get("dataset")},
        "per_k": per_k,
    }
