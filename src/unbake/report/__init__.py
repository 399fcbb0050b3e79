"""Reports: Markdown of comparisons (see :class:`~unbake.evaluation.compare.Comparison`),
plots, and Markdown and self-contained HTML of benchmark results (``unbake report``)."""

from unbake.report.plots import plot_comparison, plot_tradeoff
from unbake.report.render import load_result, render_html, render_markdown, write_report

__all__ = [
    "load_result",
    "plot_comparison",
    "plot_tradeoff",
    "render_html",
    "render_markdown",
    "write_report",
]
