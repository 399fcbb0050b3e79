"""Canonical JSON by RFC 8785 (JCS), the bytes a certificate's signature covers.

JCS serialises a JSON value so that any two parties derive the same bytes: object keys
sorted by their UTF-16 code units, no whitespace, numbers as ECMAScript prints an
IEEE-754 double (``Number.prototype.toString``), strings with the fewest escapes
(``\\"``, ``\\\\``, ``\\b \\f \\n \\r \\t`` and ``\\u00xx`` for the other control
characters; everything else literal), and the result encoded as UTF-8. Non-finite
numbers, integers that no double holds exactly, non-string keys and lone surrogates have
no JCS form and are refused with :class:`ValueError`.

>>> canonicalize({"b": [1.0, 1e21, 0.000001], "a": "\\u20ac\\n", "c": None}).decode()
'{"a":"€\\\\n","b":[1,1e+21,0.000001],"c":null}'
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

__all__ = ["canonicalize", "number"]

_SHORT = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def number(value: float) -> str:
    """``value`` as ECMAScript's ``Number.prototype.toString`` prints it (RFC 8785 3.2.2.3).

    >>> [number(x) for x in (0.0, -0.0, 4.5, 2e-3, 1e30, 1e-7, 123456789012345680000.0)]
    ['0', '0', '4.5', '0.002', '1e+30', '1e-7', '123456789012345680000']
    """
    if not math.isfinite(value):
        raise ValueError(f"{value!r} has no JSON form (RFC 8785 allows finite numbers only)")
    if value == 0:
        return "0"  # also -0
    if value < 0:
        return "-" + number(-value)
    # repr() gives the shortest digits that round-trip, as ECMAScript requires.
    # A finite value's exponent is an int ('n', 'N' and 'F' mark NaN and infinity).
    _sign, digits, exponent = Decimal(repr(value)).as_tuple()
    exponent = int(exponent)
    text = "".join(map(str, digits)).rstrip("0")
    exponent += len(digits) - len(text)
    k = len(text)
    n = exponent + k  # value = 0.text * 10**n
    if k <= n <= 21:
        return text + "0" * (n - k)
    if 0 < n <= 21:
        return text[:n] + "." + text[n:]
    if -6 < n <= 0:
        return "0." + "0" * -n + text
    mantissa = text if k == 1 else text[0] + "." + text[1:]
    return f"{mantissa}e{'+' if n - 1 >= 0 else '-'}{abs(n - 1)}"


def _string(value: str) -> str:
    out = []
    for ch in value:
        if ch in _SHORT:
            out.append(_SHORT[ch])
        elif ch < " ":
            out.append(f"\\u{ord(ch):04x}")
        elif "\ud800" <= ch <= "\udfff":
            raise ValueError("a string holds a lone surrogate, which has no UTF-8 form")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _utf16(key: str) -> bytes:
    return key.encode("utf-16-be", "surrogatepass")


def _write(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        as_float = float(value)
        if as_float != value:
            raise ValueError(f"the integer {value} is not exactly a double, so JCS cannot hold it")
        out.append(number(as_float))
    elif isinstance(value, float):
        out.append(number(value))
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _write(item, out)
        out.append("]")
    elif isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise ValueError("JSON object keys must be strings")
        out.append("{")
        for i, key in enumerate(sorted(value, key=_utf16)):
            if i:
                out.append(",")
            out.append(_string(key))
            out.append(":")
            _write(value[key], out)
        out.append("}")
    else:
        raise ValueError(f"a {type(value).__name__} is not a JSON value")


def canonicalize(value: Any) -> bytes:
    """The RFC 8785 canonical UTF-8 bytes of the JSON value ``value``."""
    out: list[str] = []
    _write(value, out)
    return "".join(out).encode("utf-8")
