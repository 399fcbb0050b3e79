"""The privacy–utility–efficiency picture of a comparison, as one PNG."""

from __future__ import annotations

import io
import math
import os

from unbake.evaluation.compare import Comparison
from unbake.workspace.atomic import atomic_write_bytes

__all__ = ["plot_comparison"]


def plot_comparison(report: Comparison, path: str | os.PathLike) -> None:
    """Scatter each method's wall time (log scale) against its avg gap to retraining.

    The lower left is best: fast and indistinguishable from retraining. The
    ``original`` row is drawn as a horizontal line (the gap of doing nothing) and
    ``retrain_seed`` as a shaded band (the noise floor).
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

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
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
