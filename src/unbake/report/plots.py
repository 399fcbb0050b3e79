"""The privacy–utility–efficiency pictures: of a comparison, and of ``bench tradeoff``."""

from __future__ import annotations

import io
import math
import os
from typing import Any

from unbake.evaluation.compare import Comparison
from unbake.workspace.atomic import atomic_write_bytes

__all__ = ["plot_comparison", "plot_tradeoff", "png_bytes"]

#: Marker of each guarantee in the trade-off plot.
MARKERS = {"exact": "s", "certified": "D", "none": "o"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def png_bytes(fig) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    _pyplot().close(fig)
    return buffer.getvalue()


def plot_comparison(report: Comparison, path: str | os.PathLike) -> None:
    """Scatter each method's wall time (log scale) against its avg gap to retraining.

    The lower left is best: fast and indistinguishable from retraining. The
    ``original`` row is drawn as a horizontal line (the gap of doing nothing) and
    ``retrain_seed`` as a shaded band (the noise floor).
    """
    plt = _pyplot()
    rows = {r.method: r for r in report.rows}
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    if "retrain_seed" in rows:
        ax.axhspan(
            0,
            rows["retrain_seed"].avg_gap,
            color="tab:green",
            alpha=0.12,
            label="noise floor (retrain, other seed)",
        )
    if "original" in rows:
        ax.axhline(
            rows["original"].avg_gap, color="tab:red", ls="--", lw=1, label="original (do nothing)"
        )
    for r in report.rows:
        if r.method in ("original", "retrain_seed") or not math.isfinite(r.seconds):
            continue
        marker = "s" if r.exact else "o"
        ax.scatter(max(r.seconds, 1e-4), r.avg_gap, marker=marker, s=40, zorder=3)
        ax.annotate(
            f"{r.method}\n{r.model}" if r.model != report.rows[0].model else r.method,
            (max(r.seconds, 1e-4), r.avg_gap),
            textcoords="offset points",
            xytext=(5, 4),
            fontsize=7,
        )
    ax.set_xscale("log")
    ax.set_xlabel("wall time of the unlearning step (s, log scale)")
    ax.set_ylabel("avg gap to retraining (points)")
    ax.set_title(
        f"{report.dataset}: forget {report.n_forget} of {report.n_train} (squares: exact methods)",
        fontsize=9,
    )
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write_bytes(path, png_bytes(fig))


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def plot_tradeoff(result: dict[str, Any]) -> bytes:
    """Two panels of ``bench tradeoff``'s rows, as PNG bytes: privacy against efficiency
    (U-LiRA AUC against speedup over retraining, log scale) and privacy against utility
    (U-LiRA AUC against TA retained). ½ is an AUC the audit cannot tell from retraining;
    ½ ± the smallest gap the ``retrain`` row's test could detect is shaded, and the
    ``original`` (doing nothing) is a dashed line. Markers: the guarantee."""
    plt = _pyplot()
    rows = [r for r in result["rows"] if r.get("part", "tradeoff") == "tradeoff"]
    named = {r["method"]: r for r in rows}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), dpi=110, sharey=True)
    panels = (
        ("speedup", "speedup over retraining the same model (log scale)", True),
        ("ta_retained", "TA retained (% of the original's)", False),
    )
    for ax, (key, label, log) in zip(axes, panels, strict=True):
        floor = named.get("retrain", {})
        if _finite(floor.get("ulira_auc")) and _finite(floor.get("detectable_auc_gap")):
            gap = floor["detectable_auc_gap"]
            ax.axhspan(
                0.5 - gap,
                0.5 + gap,
                color="tab:green",
                alpha=0.12,
                label="retraining ± detectable gap",
            )
        if _finite(named.get("original", {}).get("ulira_auc")):
            ax.axhline(
                named["original"]["ulira_auc"],
                color="tab:red",
                ls="--",
                lw=1,
                label="original (do nothing)",
            )
        for r in rows:
            x, y = r.get(key), r.get("ulira_auc")
            if r["method"] in ("original", "retrain_seed") or not (_finite(x) and _finite(y)):
                continue
            ax.scatter(x, y, marker=MARKERS.get(r.get("guarantee"), "o"), s=42, zorder=3)
            ax.annotate(r["method"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.axhline(0.5, color="grey", lw=0.6)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("U-LiRA AUC (0.5: indistinguishable)")
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=7, loc="best")
    cfg = result.get("config", {})
    fig.suptitle(
        f"{result.get('dataset', '?')}: forget {cfg.get('n_forget', '?')} of "
        f"{cfg.get('n_train', '?')} (squares: exact, diamonds: certified, circles: none)",
        fontsize=9,
    )
    fig.tight_layout()
    return png_bytes(fig)
