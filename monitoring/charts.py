"""The drift report's key charts as PNG files (the same panels as the Grafana dashboard)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from recflow.io import atomic_path

if TYPE_CHECKING:
    from monitoring.drift import DriftSummary


def _save(fig: object, path: Path) -> str:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    return str(path)


def write_charts(summary: DriftSummary, reference: pd.DataFrame, current: pd.DataFrame,
                 items: pd.DataFrame | None, out_dir: Path) -> dict[str, str]:
    """Write feature_drift.png, target_rates.png and shown_mix.png (when categories are known); return paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from monitoring.features import category_of

    files: dict[str, str] = {}
    if summary.columns:
        fig, ax = plt.subplots(figsize=(8, 0.4 * len(summary.columns) + 1.5))
        names = [f"{c.group}:{c.column}" for c in summary.columns]
        # p-value tests drift when the score is small; show 1 - p so that "longer bar = more drift" holds
        scores = [1 - c.score if "p_value" in c.method else c.score for c in summary.columns]
        limits = [1 - c.threshold if "p_value" in c.method else c.threshold for c in summary.columns]
        colors = ["tab:red" if c.drifted else ("tab:gray" if not c.counted else "tab:blue")
                  for c in summary.columns]
        y = np.arange(len(names))
        ax.barh(y, scores, color=colors)
        ax.scatter(limits, y, marker="|", s=300, color="black", label="threshold")
        ax.set_yticks(y, names)
        ax.set_xlabel("drift score (red: drifted, gray: informational)")
        ax.set_title(f"Feature and prediction drift (share {summary.drift_share:.2f})")
        ax.legend(loc="lower right")
        files["chart_feature_drift"] = _save(fig, out_dir / "feature_drift.png")
    rates = [t for t in summary.target if t.reference is not None and t.current is not None]
    if rates:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        x = np.arange(len(rates))
        ax.bar(x - 0.2, [t.reference for t in rates], 0.4, label="reference")
        ax.bar(x + 0.2, [t.current for t in rates], 0.4, label="current",
               color=["tab:red" if t.drifted and t.counted else "tab:orange" for t in rates])
        ax.set_xticks(x, [t.name.upper() for t in rates])
        ax.set_ylabel("rate")
        ax.set_title("Target: click-through and conversion rate")
        ax.legend()
        files["chart_target_rates"] = _save(fig, out_dir / "target_rates.png")
    ref_cat, cur_cat = category_of(reference, items), category_of(current, items)
    if ref_cat is not None and cur_cat is not None:
        shown = pd.concat([ref_cat[reference["event_type"] == "impression"].value_counts(normalize=True),
                           cur_cat[current["event_type"] == "impression"].value_counts(normalize=True)],
                          axis=1, keys=["reference", "current"]).fillna(0.0).sort_index()
        fig, ax = plt.subplots(figsize=(8, 3.5))
        shown.plot.bar(ax=ax)
        ax.set_ylabel("share of impressions")
        ax.set_title("Category mix of what was shown")
        files["chart_shown_mix"] = _save(fig, out_dir / "shown_mix.png")
    if "score" in reference.columns and "score" in current.columns:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for frame, label in ((reference, "reference"), (current, "current")):
            scores = pd.to_numeric(frame.loc[frame["event_type"] == "impression", "score"], errors="coerce")
            ax.hist(scores.dropna(), bins=40, alpha=0.5, density=True, label=label)
        ax.set_title("Score distribution of shown items")
        ax.legend()
        files["chart_scores"] = _save(fig, out_dir / "score_distribution.png")
    return files
