"""RFC 8785 (JCS): the canonical bytes certificates are signed over, against the RFC's own examples."""

import json
import math
import struct

import pytest

from unbake._jcs import canonicalize, number

#: RFC 8785 Appendix B: IEEE-754 bits and the ECMAScript text they serialise to.
APPENDIX_B = [
    ("0000000000000000", "0"),
    ("8000000000000000", "0"),
    ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"),
    ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"),
    ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"),
    ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]


def _double(bits: str) -> float:
    return struct.unpack(">d", bytes.fromhex(bits))[0]


@pytest.mark.parametrize(("bits", "text"), APPENDIX_B)
def test_numbers_serialise_as_ecmascript(bits, text):
    assert number(_double(bits)) == text
    assert float(text) == _double(bits) or _double(bits) == 0  # and they round-trip


@pytest.mark.parametrize("bits", ["7fffffffffffffff", "7ff0000000000000", "fff0000000000000"])
def test_nan_and_infinity_have_no_canonical_form(bits):
    with pytest.raises(ValueError, match="finite"):
        canonicalize({"x": _double(bits)})


def test_the_rfc_example_of_section_3_2_3():
    source = (
        '{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],'
        ' "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",'
        ' "literals": [null, true, false]}'
    )
    expected = (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )
    assert canonicalize(json.loads(source)) == expected.encode("utf-8")


def test_keys_sort_by_utf16_code_units_as_in_section_3_2_3():
    source = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    order = list(json.loads(canonicalize(source)))
    # U+1F600 is the surrogate pair D83D DE00, so it sorts before U+FB33 (code points would not).
    assert order == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]


def test_integers_and_refusals():
    assert canonicalize([0, -7, 2**53, 10**21]) == b"[0,-7,9007199254740992,1e+21]"
    with pytest.raises(ValueError, match="not exactly a double"):
        canonicalize(2**53 + 1)
    with pytest.raises(ValueError, match="keys must be strings"):
        canonicalize({1: "x"})
    with pytest.raises(ValueError, match="lone surrogate"):
        canonicalize("\ud800")
    with pytest.raises(ValueError, match="not a JSON value"):
        canonicalize({"x": object()})
    assert math.isclose(json.loads(canonicalize(0.1 + 0.2)), 0.30000000000000004)
