"""The installed distribution's version, read from its metadata (``pyproject.toml``).

At the bottom of the package, so any layer may read it without importing the package
root (which imports every layer).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    __version__ = version("unbake")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
