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

import copy
import importlib
import importlib.metadata
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from unbake.exceptions import InvalidParameterError, UnbakeError
from unbake.registry import Registry

__all__ = [
    "ALLOW_ENV",
    "CNN",
    "MLP",
    "MODELS",
    "ModelSpec",
    "ResNet18",
    "allow_factory",
    "build_model",
    "check_factory",
]

#: The entry-point group through which installed packages add model factories: an entry
#: point ``name = "package.module:function"`` makes ``--model name`` (and the path itself)
#: available.
ENTRY_POINTS = "unbake.models"
#: Environment variable allow-listing ``"package.module:function"`` factories (comma-separated).
ALLOW_ENV = "UNBAKE_ALLOWED_FACTORIES"

MODELS: Registry[nn.Module] = Registry("model", entry_points=ENTRY_POINTS)

_ALLOWED: set[str] = set()


#: ModelSpec name of a model given as an ``nn.Module`` instance (in-memory only).
INSTANCE = "<module>"


@dataclass(frozen=True)
class ModelSpec:
    """An architecture by name (or a trusted ``"module:function"``) and its keyword arguments.

    :meth:`from_module` wraps an ``nn.Module`` instance instead: its current weights
    are the initialisation that every (re)training starts from, so retraining stays
    exact. Such a spec lives in memory only; to save models in a workspace, name a
    ``"module:function"`` factory.
    """

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    module: nn.Module | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_module(cls, module: nn.Module) -> ModelSpec:
        return cls(INSTANCE, {"class": type(module).__name__}, copy.deepcopy(module))

    def to_dict(self) -> dict[str, Any]:
        if self.module is not None:
            raise UnbakeError(
                f"A model given as an nn.Module instance ({self.params['class']}) cannot be "
                "saved; pass a 'package.module:function' factory as the model instead."
            )
        check_factory(self.name)
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


def build_model(
    spec: ModelSpec | str, *, input_shape: Sequence[int], n_classes: int, seed: int
) -> nn.Module:
    """Build a freshly initialised model; the same ``seed`` gives the same weights.

    The global torch RNG is forked, so the caller's random state is untouched.
    """
    if isinstance(spec, str):
        spec = ModelSpec(spec)
    if spec.module is not None:
        return copy.deepcopy(spec.module)
    if spec.name.startswith("hf:"):
        from unbake.models.hf import load_causal_lm

        check_factory(spec.name)
        unknown = sorted(set(spec.params) - {"lora_rank"})
        if unknown:
            raise InvalidParameterError(
                f"Model {spec.name!r} has no parameter {unknown[0]!r}; a language model "
                "takes only lora_rank."
            )
        return load_causal_lm(spec.name, seed=seed, **spec.params)
    factory = _import_factory(spec.name) if ":" in spec.name else MODELS.get(spec.name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = factory(input_shape=tuple(input_shape), n_classes=n_classes, **spec.params)
        except TypeError as exc:
            raise InvalidParameterError(
                f"Model {spec.name!r} rejected its parameters {spec.params} ({exc}); "
                "check the names with `unbake methods`/the model's docstring."
            ) from None
    if not isinstance(model, nn.Module):
        raise UnbakeError(
            f"Model factory {spec.name!r} returned {type(model).__name__}, not a torch.nn.Module; "
            "return an nn.Module from the factory."
        )
    return model


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
        return getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise InvalidParameterError(
            f"Cannot import model factory {path!r} ({exc}); give it as 'package.module:function'."
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
