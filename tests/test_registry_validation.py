import pytest

from unbake import METHODS, create
from unbake._validation import Interval, Options, validate_params
from unbake.exceptions import InvalidParameterError, UnknownNameError
from unbake.registry import ClassRegistry, Registry


def test_registry_duplicate_and_unknown():
    reg = Registry("widget")

    @reg.register("a")
    def make_a(*, size=1):
        return size

    with pytest.raises(InvalidParameterError, match="already registered"):
        reg.register("a")(make_a)
    with pytest.raises(UnknownNameError, match=r"Unknown widget 'b'; choose one of: a\."):
        reg.create("b")
    with pytest.raises(
        InvalidParameterError, match="has no parameter 'colour'; its parameters are: size"
    ):
        reg.create("a", colour=2)
    assert reg.create("a", size=3) == 3


def test_a_class_registry_holds_only_subclasses_and_returns_the_class():
    class Base:
        sides = 0

    reg = ClassRegistry("shape", Base)

    @reg.register("square")
    class Square(Base):
        sides = 4

        def __init__(self, *, size=1):
            self.size = size

    assert reg.get("square") is Square and reg.get("square").sides == 4
    assert reg.create("square", size=2).size == 2
    with pytest.raises(InvalidParameterError, match="not a subclass of Base") as info:
        reg.register("circle")(lambda: Base())
    assert "\n" not in str(info.value) and "circle" not in reg
    with pytest.raises(InvalidParameterError, match="not a subclass of Base"):
        reg.register("int")(int)
    assert isinstance(METHODS, ClassRegistry) and METHODS.get("retrain").name == "retrain"


def test_unknown_method_lists_the_registered_ones():
    with pytest.raises(UnknownNameError) as info:
        create("nope")
    for name in METHODS.available():
        assert name in str(info.value)


def test_validation_message_template():
    constraints = {
        "lr": [Interval(float, 0, None, closed="neither")],
        "mode": [Options({"a", "b"})],
    }
    with pytest.raises(InvalidParameterError) as info:
        validate_params({"lr": -1}, constraints, "SCRUB")
    assert (
        str(info.value)
        == "The 'lr' parameter of SCRUB must be a float in (0, inf). Got -1 instead."
    )
    with pytest.raises(InvalidParameterError, match=r"one of \{'a', 'b'\}"):
        validate_params({"mode": "c"}, constraints, "X")
    validate_params({"lr": 0.5, "mode": "a"}, constraints, "X")


def test_interval_edges():
    iv = Interval(int, 1, 3, closed="left")
    assert iv.is_satisfied_by(1) and iv.is_satisfied_by(2)
    assert (
        not iv.is_satisfied_by(3) and not iv.is_satisfied_by(True) and not iv.is_satisfied_by(1.5)
    )
    assert not Interval(float, 0, 1).is_satisfied_by(float("nan"))


@pytest.mark.parametrize("name", ["finetune", "neggrad"])
def test_method_rejects_bad_hyperparameter_at_unlearn(name):
    from unbake.testing.conformance import _task

    method = create(name, lr=-1.0)
    with pytest.raises(InvalidParameterError, match=rf"The 'lr' parameter of {name} must be"):
        method.unlearn(_task(method))


def test_set_params_updates_and_rejects_unknown_names():
    method = create("finetune").set_params(epochs=2)
    assert method.get_params()["epochs"] == 2
    with pytest.raises(InvalidParameterError, match="finetune has no parameter 'colour'"):
        method.set_params(colour=1)
