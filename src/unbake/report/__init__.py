"""Reports of comparisons: Markdown (see :class:`~unbake.evaluation.compare.Comparison`) and plots."""

from unbake.report.plots import plot_comparison

__all__ = ["plot_comparison"]
