"""Built-in architectures and user model factories.

Every model maps a float tensor of shape ``(batch, *input_shape)`` to class logits.

unbake calls only the factories an operator chose to trust: the built-in models, those
that installed packages register through the ``unbake.models`` entry-point group, and
``"package.module:function"`` paths allow-listed with :func:`allow_factory` or the
``UNBAKE_ALLOWED_FACTORIES`` environment variable (comma-separated). Any other path is
refused before its module is imported, whether it comes from the command line or from a
workspace's catalog (a tampered spec cannot make a retrain call ``os:system``). A
language model ``hf:PATH`` is loaded only from a folder on disk (never from the Hub), or
by a name allow-listed the same way (``hf:NAME``, for a model in the local cache).

>>> from unbake.models import ModelSpec, build_model
>>> net = build_model(ModelSpec("mlp", {"hidden": [32]}), input_shape=(1, 8, 8), n_classes=10, seed=0)
>>> net(torch.zeros(2, 1, 8, 8)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

import importlib
import importlib.metadata
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from unbake.exceptions import InvalidParameterError, UnbakeError
from unbake.models.factory import PROTOCOL, check_seeded, check_signature, construct
from unbake.registry import Registry

__all__ = [
    "ALLOW_ENV",
    "CNN",
    "MLP",
    "MODELS",
    "PROTOCOL",
    "ModelSpec",
    "ResNet18",
    "allow_factory",
    "build_checked",
    "build_model",
    "check_factory",
    "check_model_params",
]

#: The entry-point group through which installed packages add model factories: an entry
#: point ``name = "package.module:function"`` makes ``--model name`` (and the path itself)
#: available.
ENTRY_POINTS = "unbake.models"
#: Environment variable allow-listing ``"package.module:function"`` factories (comma-separated).
ALLOW_ENV = "UNBAKE_ALLOWED_FACTORIES"

MODELS: Registry[nn.Module] = Registry("model", entry_points=ENTRY_POINTS)

_ALLOWED: set[str] = set()


#: ModelSpec name of a model adopted as a trained ``nn.Module`` without a factory.
INSTANCE = "<module>"


@dataclass(frozen=True)
class ModelSpec:
    """An architecture: a factory by name (or a trusted ``"module:function"``) and its
    keyword arguments.

    Every name is a factory that follows the protocol of :mod:`unbake.models.factory`.
    :meth:`from_factory` wraps a Python callable instead (in memory; saved by its
    ``"module:function"`` path once that path is trusted). :meth:`from_module` names a
    module that is *only* a trained model: it has no factory, nothing can be built from
    it, and a method that retrains (``retrain``) refuses it.
    """

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    factory: Callable[..., nn.Module] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_module(cls, module: nn.Module) -> ModelSpec:
        """The spec of a trained module adopted without a factory (it builds nothing)."""
        return cls(INSTANCE, {"class": type(module).__name__})

    @classmethod
    def from_factory(cls, factory: Callable[..., nn.Module], **params: Any) -> ModelSpec:
        """A Python callable as the factory, named by its ``module:qualname`` path."""
        if isinstance(factory, nn.Module) or not callable(factory):
            raise InvalidParameterError(
                f"A model factory must be a callable; got a {type(factory).__name__} "
                f"instance. A factory is {PROTOCOL}."
            )
        name = f"{getattr(factory, '__module__', '?')}:{getattr(factory, '__qualname__', '?')}"
        return cls(name, dict(params), factory)

    @classmethod
    def of(cls, model: ModelSpec | str | Callable[..., nn.Module]) -> ModelSpec:
        """``model`` as a spec: a spec, a registered or ``module:function`` name, or a
        factory callable. A module instance is refused: it is not a factory."""
        if isinstance(model, ModelSpec):
            return model
        if isinstance(model, str):
            return cls(model)
        if isinstance(model, nn.Module):
            raise InvalidParameterError(
                f"model= got a {type(model).__name__} instance, not a factory: unbake "
                "trains and retrains from a factory, and a module's weights (maybe "
                "already trained) are not an initialisation; pass the function or class "
                f"that builds it ({PROTOCOL}), or adopt a trained module with "
                "unbake.adopt(samples, module=..., factory=...)."
            )
        return cls.from_factory(model)

    @property
    def has_factory(self) -> bool:
        """Whether a fresh module can be built from this spec."""
        return self.name != INSTANCE

    @property
    def label(self) -> str:
        """How tables and logs name the architecture."""
        return self.params["class"] if not self.has_factory else self.name

    def to_dict(self) -> dict[str, Any]:
        if not self.has_factory:
            raise UnbakeError(
                f"A model adopted as a trained module without a factory "
                f"({self.params['class']}) cannot be saved; give its factory as a trusted "
                "'package.module:function'."
            )
        check_factory(self.name)
        if self.factory is not None and _import_factory(self.name) is not self.factory:
            raise InvalidParameterError(
                f"The model factory {self.name!r} cannot be saved: that path does not import "
                "the function given; define the factory at a module's top level."
            )
        return {"name": self.name, "params": dict(self.params)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """The spec saved by :meth:`to_dict`; a factory that is not trusted is refused."""
        name = data.get("name") if isinstance(data, dict) else None
        params = data.get("params", {}) if isinstance(data, dict) else None
        if not isinstance(name, str) or not isinstance(params, dict):
            raise InvalidParameterError(
                f"A model spec is {{'name': ..., 'params': {{...}}}}; got {data!r:.80}. "
                "Restore the checkpoint or catalog that holds it, or retrain."
            )
        check_factory(name)
        return cls(name, dict(params))


def factory_of(spec: ModelSpec) -> Callable[..., nn.Module]:
    """The callable that builds ``spec``'s modules (trusted and imported if by path)."""
    if spec.factory is not None:
        return spec.factory
    if not spec.has_factory:
        raise InvalidParameterError(
            f"The model {spec.params.get('class', '?')} was adopted as a trained module "
            "without a factory, so no fresh copy can be built; adopt it with factory=... "
            f"({PROTOCOL})."
        )
    return _import_factory(spec.name) if ":" in spec.name else MODELS.get(spec.name)


def check_model_params(spec: ModelSpec | str) -> None:
    """Refuse ``spec``'s parameters before anything is built or written: an unknown one,
    a missing one, or a factory that does not follow the protocol."""
    spec = ModelSpec.of(spec)
    if spec.name.startswith("hf:"):
        _check_lm_params(spec)
    else:
        check_signature(spec.name, factory_of(spec), spec.params)


def _check_lm_params(spec: ModelSpec) -> None:
    check_factory(spec.name)
    unknown = sorted(set(spec.params) - {"lora_rank"})
    if unknown:
        raise InvalidParameterError(
            f"Model {spec.name!r} has no parameter {unknown[0]!r}; a language model "
            "takes only lora_rank."
        )


def build_model(
    spec: ModelSpec | str | Callable[..., nn.Module],
    *,
    input_shape: Sequence[int],
    n_classes: int,
    seed: int,
) -> nn.Module:
    """Build a freshly initialised model; the same ``seed`` gives the same weights.

    The factory is called as :data:`~unbake.models.factory.PROTOCOL` says, under a forked
    global torch RNG seeded with ``seed``, so the caller's random state is untouched.
    """
    spec = ModelSpec.of(spec)
    if spec.name.startswith("hf:"):
        from unbake.models.hf import load_causal_lm

        _check_lm_params(spec)
        return load_causal_lm(spec.name, seed=seed, **spec.params)
    factory = factory_of(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return construct(
            spec.name, factory, spec.params, input_shape=input_shape, n_classes=n_classes
        )


def is_builtin(spec: ModelSpec) -> bool:
    """Whether ``spec`` is one of unbake's own architectures (known to honour the seed)."""
    if spec.factory is not None or ":" in spec.name or not spec.has_factory:
        return False
    return getattr(MODELS.get(spec.name), "__module__", "") == __name__


def build_checked(
    spec: ModelSpec, *, input_shape: Sequence[int], n_classes: int, seed: int
) -> nn.Module:
    """:func:`build_model`, and for a user's factory a second build that must be bitwise
    the first (:func:`~unbake.models.factory.check_seeded`); returns the first."""

    def build() -> nn.Module:
        return build_model(spec, input_shape=input_shape, n_classes=n_classes, seed=seed)

    if spec.name.startswith("hf:") or is_builtin(spec):
        return build()
    return check_seeded(build, spec.name, seed)


def allow_factory(path: str) -> None:
    """Trust the ``"package.module:function"`` factory ``path`` for the rest of this process.

    Worker processes that do not fork from this one (Ray, a spawned pool) do not see it;
    use ``UNBAKE_ALLOWED_FACTORIES`` or an entry point for them.
    """
    module_name, sep, attr = path.partition(":")
    if not (module_name and sep and attr):
        raise InvalidParameterError(
            f"Cannot allow {path!r}: give the factory as 'package.module:function'."
        )
    _ALLOWED.add(path)


def _allowed_paths() -> set[str]:
    from_env = {p.strip() for p in os.environ.get(ALLOW_ENV, "").split(",") if p.strip()}
    registered = {
        f"{ep.module}:{ep.attr}"
        for ep in importlib.metadata.entry_points(group=ENTRY_POINTS)
        if ep.attr
    }
    return _ALLOWED | from_env | registered


def check_factory(name: str, *, kind: str = "model factory") -> None:
    """Refuse ``name`` unless it is built in, registered, allow-listed, or an ``hf:`` model
    in a local folder.

    Nothing is imported for a refused path.
    """
    if name.startswith("hf:"):
        if name not in _allowed_paths() and not os.path.isdir(name.removeprefix("hf:")):
            raise InvalidParameterError(
                f"The language model {name!r} is not a local folder: unbake loads language "
                "models only from disk, never from the Hugging Face Hub; give hf:/path/to/"
                f"model, or for a model in the local cache allow-list it ({ALLOW_ENV}={name})."
            )
        return
    if ":" not in name:
        MODELS.get(name)  # unknown names: one line listing the registered models
        return
    if name not in _allowed_paths():
        raise InvalidParameterError(
            f"The {kind} {name!r} is not trusted: unbake calls only the built-in models "
            f"({', '.join(MODELS.available())}), factories registered under the "
            f"{ENTRY_POINTS!r} entry-point group, and paths allow-listed in {ALLOW_ENV}; if "
            f"you trust that code, set {ALLOW_ENV}={name} or register it as an entry point."
        )


def _import_factory(path: str, *, kind: str = "model factory"):
    check_factory(path, kind=kind)
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidParameterError(
            f"Cannot import the {kind} {path!r} ({exc}); make {module_name!r} importable: "
            "run from the folder that holds it, or put that folder on PYTHONPATH."
        ) from None
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        raise InvalidParameterError(
            f"Cannot import the {kind} {path!r} ({exc}); give it as 'package.module:function'."
        ) from None


@MODELS.register("logreg")
class LogReg(nn.Module):
    """Multinomial logistic regression on the flattened input."""

    def __init__(self, *, input_shape: Sequence[int], n_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(math.prod(input_shape), n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


@MODELS.register("mlp")
class MLP(nn.Module):
    """A ReLU multilayer perceptron on the flattened input."""

    def __init__(
        self, *, input_shape: Sequence[int], n_classes: int, hidden: Sequence[int] = (256, 128)
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU()]
            width = int(h)
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@MODELS.register("cnn")
class CNN(nn.Module):
    """A small conv net for 8×8 and 28×28 single- or multi-channel images.

    Conv–ReLU–max-pool blocks, then the flattened feature map through one hidden layer.
    Flattening (rather than a global average pool) keeps *where* a feature is: on
    Fashion-MNIST it lifts test accuracy from about 80% to about 90%, and a corner trigger
    is no longer averaged away with the rest of the image.
    """

    def __init__(
        self,
        *,
        input_shape: Sequence[int],
        n_classes: int,
        channels: Sequence[int] = (32, 64),
        hidden: int = 128,
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise InvalidParameterError(
                f"cnn needs image input of shape (C, H, W), got {tuple(input_shape)}; "
                "use mlp or logreg for tabular data."
            )
        c_in, height, width = (int(d) for d in input_shape)
        blocks: list[nn.Module] = []
        for c in channels:
            blocks += [nn.Conv2d(c_in, int(c), 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c_in, height, width = int(c), height // 2, width // 2
        if height < 1 or width < 1:
            raise InvalidParameterError(
                f"cnn's {len(channels)} pooling blocks shrink a {tuple(input_shape)} image to "
                "nothing; give fewer channels= entries or a larger image."
            )
        self.features = nn.Sequential(
            *blocks, nn.Flatten(), nn.Linear(c_in * height * width, int(hidden)), nn.ReLU()
        )
        self.head = nn.Linear(int(hidden), n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


@MODELS.register("resnet18")
class ResNet18(nn.Module):
    """The CIFAR-style ResNet-18 (3×3 stem, no max-pool), with a width multiplier."""

    def __init__(self, *, input_shape: Sequence[int], n_classes: int, width: int = 64) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise InvalidParameterError(
                f"resnet18 needs image input of shape (C, H, W), got {tuple(input_shape)}."
            )
        stem = nn.Sequential(
            nn.Conv2d(input_shape[0], width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        stages, c_in = [], width
        for i, mult in enumerate((1, 2, 4, 8)):
            c_out = width * mult
            stride = 1 if i == 0 else 2
            stages += [_BasicBlock(c_in, c_out, stride), _BasicBlock(c_out, c_out, 1)]
            c_in = c_out
        self.features = nn.Sequential(stem, *stages, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(c_in, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
