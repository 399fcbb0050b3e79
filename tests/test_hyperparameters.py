"""Every method's and strategy's hyperparameters are declared once, as fields, and the
constructor, the validator, `unbake methods` and the docs table all read that declaration."""

import dataclasses
import inspect
import json

import pytest
from typer.testing import CliRunner

from unbake._validation import (
    Declared,
    Hyperparameter,
    Interval,
    describe,
    hyperparameter,
    parameters,
    validate_params,
)
from unbake.cli import app
from unbake.exceptions import InvalidParameterError
from unbake.methods import METHODS, Unlearner
from unbake.report.docs import parameters_table
from unbake.training import STRATEGIES

REGISTERED = [("method", n) for n in METHODS.available()] + [
    ("strategy", n) for n in STRATEGIES.available()
]


def _registry(kind):
    return METHODS if kind == "method" else STRATEGIES


def _declared(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def _outside(constraints: list) -> object:
    """A value that satisfies none of ``constraints``: past an interval's edge if there is
    one, else a value of the wrong kind."""
    candidates: list[object] = []
    for c in constraints:
        if isinstance(c, Interval):
            if c.low is not None:
                candidates.append(c.type(c.low) - 1)
            if c.high is not None:
                candidates.append(c.type(c.high) + 1)
    candidates += ["not-a-valid-value", -1, [1], {1, 2}]  # the set: no JSON holds it
    for value in candidates:
        try:
            validate_params({"p": value}, {"p": constraints}, "probe")
        except InvalidParameterError:
            return value
    raise AssertionError(f"no value lies outside {constraints}")


@pytest.mark.parametrize("kind,name", REGISTERED)
def test_the_declaration_is_the_single_source(kind, name):
    cls = _registry(kind).get(name)
    declared = _declared(cls)
    signature = inspect.signature(cls.__init__).parameters
    keywords = {n for n, p in signature.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert set(declared) == keywords, f"{name}: fields and constructor differ"
    positional = [n for n, p in signature.items() if n != "self" and n not in keywords]
    assert not positional, f"{name} takes {positional} besides its keyword-only parameters"
    assert set(cls._parameter_constraints) == set(declared), f"{name}: a hand-written constraint"
    for pname, f in declared.items():
        help_text, constraints = f.metadata.get("help", ""), f.metadata.get("constraints", [])
        assert help_text.strip() and constraints, f"{name}.{pname} lacks help or a constraint"
        assert signature[pname].default == f.default
        # The declared default passes its own constraints.
        validate_params({pname: f.default}, {pname: constraints}, name)
        bad = _outside(constraints)
        allowed = " or ".join(describe(c) for c in constraints)
        expected = f"The {pname!r} parameter of {name} must be {allowed}. Got {bad!r} instead."
        with pytest.raises(InvalidParameterError) as info:
            _registry(kind).create_checked(name, {pname: bad})
        assert str(info.value) == expected


@pytest.mark.parametrize("kind,name", REGISTERED)
def test_get_set_params_and_clone_follow_the_declaration(kind, name):
    cls = _registry(kind).get(name)
    obj = cls()
    params = obj.get_params()
    assert list(params) == list(_declared(cls))
    assert params == {n: f.default for n, f in _declared(cls).items()}
    clone = cls(**params)
    assert clone is not obj and clone.get_params() == params
    assert repr(clone) == f"{cls.__name__}({', '.join(f'{k}={v!r}' for k, v in params.items())})"
    if kind == "method":
        with pytest.raises(InvalidParameterError, match="has no parameter 'colour'"):
            obj.set_params(colour=1)


def test_unbake_methods_and_the_docs_print_the_declaration():
    res = CliRunner().invoke(app, ["methods", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["method"]: r for r in json.loads(res.stdout)["methods"]}
    table = parameters_table()
    for name in METHODS.available():
        cls = METHODS.get(name)
        declared = _declared(cls)
        shown = rows[name]["parameters"]
        assert [p["name"] for p in shown] == list(declared) == [p["name"] for p in parameters(cls)]
        for p in shown:
            f = declared[p["name"]]
            assert p["default"] == f.default and p["help"] == f.metadata["help"]
            assert p["allowed"] == " or ".join(describe(c) for c in f.metadata["constraints"])
            cells = [f"`{p['name']}`", f"`{f.default!r}`", p["allowed"], p["help"]]
            assert " | ".join(c.replace("|", "\\|") for c in cells) + " |" in table
    text = CliRunner().invoke(app, ["methods"]).stdout
    assert "what it sets" in text and "Rows per batch." in text


def test_a_shared_hyperparameter_takes_each_class_default_and_fixed_drops_one():
    npo, simnpo = METHODS.get("npo"), METHODS.get("simnpo")
    assert npo().beta == 0.1 and simnpo().beta == 2.5
    assert _declared(npo)["beta"].metadata == _declared(simnpo)["beta"].metadata
    lora = STRATEGIES.get("sisa_lora")()
    assert "aggregation" not in lora.get_params() and lora.aggregation == "mean"
    with pytest.raises(InvalidParameterError, match="no parameter 'aggregation'"):
        STRATEGIES.create("sisa_lora", aggregation="vote")


def test_a_field_without_help_or_constraints_is_refused_when_the_class_is_defined():
    with pytest.raises(InvalidParameterError, match="declares 'colour' without help"):

        class Careless(Unlearner):
            name = "careless"
            colour: int = 3

    class Careful(Declared):
        size: int = Hyperparameter("How big.", [Interval(int, 1, None)])(2)
        shape: str = hyperparameter("round", help="Which shape.", constraints=[str])

    assert Careful(size=5).get_params() == {"size": 5, "shape": "round"}
    assert parameters(Careful)[0] == {
        "name": "size",
        "default": 2,
        "allowed": "an int in [1, inf)",
        "help": "How big.",
    }


def test_a_loop_method_keeps_the_inherited_ranges_of_the_knobs_it_declares():
    from unbake.methods._blocks import LoopUnlearner
    from unbake.methods.base import EPOCHS, LR

    class Ascent(LoopUnlearner):  # not registered: reads no retain set, has no retain_samples
        name = "ascent-probe"
        epochs: int = EPOCHS(1)
        lr: float = LR(1e-4)

    assert set(Ascent.search_space) == {"epochs", "lr"}
    assert set(METHODS.get("npo").search_space) == {"epochs", "lr"}
    assert "retain_samples" in METHODS.get("finetune").search_space


def test_the_docs_print_every_strategy_parameter_from_its_declaration():
    from unbake.report.docs import STRATEGIES_MARKER, on_page_markdown

    page = on_page_markdown(f"x\n\n{STRATEGIES_MARKER}\n", None, None, None)
    assert STRATEGIES_MARKER not in page
    for name in STRATEGIES.available():
        for i, p in enumerate(parameters(STRATEGIES.get(name))):
            label = f"`{name}`" if i == 0 else ""
            row = f"| {label} | `{p['name']}` | `{p['default']!r}` | {p['allowed']} | {p['help']} |"
            assert row in page, row
