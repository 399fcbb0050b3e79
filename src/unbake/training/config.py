"""Training configuration: one validated, serialisable object."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from unbake.exceptions import InvalidParameterError

__all__ = ["TrainConfig"]


class TrainConfig(BaseModel):
    """Hyperparameters of the seeded trainer.

    >>> TrainConfig.parse(epochs=3, lr=0.01).epochs
    3
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    epochs: int = Field(20, ge=0)
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["sgd", "adam"] = "adam"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["constant", "cosine", "step"] = "constant"
    step_gamma: float = Field(0.1, gt=0, le=1)

    @classmethod
    def parse(cls, **values: Any) -> TrainConfig:
        """Validate ``values``; a bad one raises a one-line :class:`InvalidParameterError`."""
        try:
            return cls(**{k: v for k, v in values.items() if v is not None})
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "config"
            raise InvalidParameterError(
                f"The {where!r} training parameter {err['msg'].lower()}. "
                f"Got {err.get('input')!r} instead."
            ) from None
