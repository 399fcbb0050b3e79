"""Strict JSON: what unbake writes is always valid JSON, never ``NaN`` or ``Infinity``.

A metric that is undefined (an accuracy on an empty set, say) is a non-finite float in
memory; in JSON it becomes ``null``.

>>> dumps({"fa": float("nan"), "ta": 97.5, "rows": [float("inf")]})
'{"fa": null, "ta": 97.5, "rows": [null]}'
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["dumps", "finite"]


def finite(obj: Any) -> Any:
    """``obj`` with every non-finite float (also inside dicts, lists, tuples) set to None."""
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:  # numpy and torch scalars
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`finite` ``(obj)``, refusing NaN and Infinity."""
    kwargs.setdefault("default", str)
    return json.dumps(finite(obj), allow_nan=False, **kwargs)
