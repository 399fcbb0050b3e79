"""The served model, swapped atomically when the catalog's current model changes.

The worker is another process, so the server cannot be told when a request is applied.
Instead every prediction first reads the catalog's current model (one indexed row; in
WAL mode a reader never waits for a writer). When it differs from the loaded one, the
new checkpoint is loaded and hash-checked outside any lock that predictions take, and
then one reference is swapped under a lock. A request's ``applied`` entry commits in the
same transaction as its new model and the purge of every model that saw its data, so a
prediction that starts after ``applied`` is visible always reads the new model, and is
answered by it. After answering, the current model is read once more: if it changed
meanwhile, the prediction is computed again on the new one.

>>> import tempfile
>>> from unbake import TrainConfig, Workspace
>>> from unbake.service import DeletionService
>>> root = tempfile.mkdtemp() + "/ws"
>>> Workspace.create(root, dataset="digits").close()
>>> svc = DeletionService(root)
>>> _ = svc.train(model="logreg", config=TrainConfig.parse(epochs=1))
>>> served = ServedModel(svc)
>>> out = served.predict([[0.0] * 64])
>>> out.model_id == svc.current_model()["model_id"], len(out.log_proba)
(True, 1)
>>> svc.close()
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from unbake.data.standardize import standardize_rows
from unbake.exceptions import InvalidParameterError, NotFoundError, UnbakeError

if TYPE_CHECKING:
    from unbake.service.deletion import DeletionService
    from unbake.training import TrainedModel

__all__ = ["Prediction", "ServedModel"]

#: How often a prediction retries when the model changes under it (a new one each time).
_RETRIES = 5


@dataclass(frozen=True)
class _Loaded:
    model_id: str
    sha256: str
    model: TrainedModel


@dataclass(frozen=True)
class Prediction:
    """Log-probabilities of each input row and the model that computed them."""

    model_id: str
    sha256: str
    log_proba: torch.Tensor


def _input_dtype(model: TrainedModel) -> torch.dtype:
    """The floating dtype the model computes in (its first floating parameter's)."""
    for p in model.module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _finite_inputs(rows: Sequence[Sequence[float]], dtype: torch.dtype) -> torch.Tensor:
    """``rows`` as a ``dtype`` tensor, refused when a value is not finite in ``dtype``
    (``1e39`` is a finite JSON number, but infinite as float32)."""
    X = torch.tensor(rows, dtype=dtype)
    bad = ~torch.isfinite(X)
    if bad.any():
        row, col = (int(i) for i in bad.nonzero()[0])
        name = str(dtype).removeprefix("torch.")
        raise InvalidParameterError(
            f"Input row {row}, value {col} is {rows[row][col]!r}, which is not finite as "
            f"{name} (the model's dtype, largest {torch.finfo(dtype).max:g}); send finite "
            "numbers in that range."
        )
    return X


class ServedModel:
    """The model a server answers with: always the catalog's current one (thread-safe)."""

    def __init__(self, service: DeletionService) -> None:
        self._service = service
        self._loaded: _Loaded | None = None
        self._swap = threading.Lock()  # guards the reference
        self._load = threading.Lock()  # one load at a time; predictions never wait on it
        self.swaps = 0  # how many times the served model changed (for /metrics)

    def _current_row(self) -> tuple[str, str]:
        row = self._service.workspace.catalog.latest_active_model()
        if row is None:
            raise NotFoundError(
                f"No model in {self._service.root} yet; train one with `unbake train`."
            )
        return row["model_id"], row["sha256"]

    def _get(self) -> _Loaded:
        with self._swap:
            loaded = self._loaded
        return loaded  # type: ignore[return-value]

    def current(self) -> _Loaded:
        """The loaded current model, loading (and hash-checking) a new one if it changed."""
        for _ in range(_RETRIES):
            model_id, sha = self._current_row()
            loaded = self._get()
            if loaded is not None and loaded.model_id == model_id:
                return loaded
            with self._load:
                loaded = self._get()
                if loaded is not None and loaded.model_id == model_id:
                    return loaded
                try:
                    model = self._service.load_model(model_id)
                except UnbakeError:
                    # Purged between the read and the load: read the current one again.
                    if self._current_row()[0] != model_id:
                        continue
                    raise
                fresh = _Loaded(model_id, sha, model)
                with self._swap:
                    self._loaded = fresh
                    self.swaps += 1
                return fresh
        raise NotFoundError(
            "The current model kept changing while it was being loaded; retry the request."
        )

    def predict(self, rows: Sequence[Sequence[float]]) -> Prediction:
        """Log-probabilities of ``rows`` (each a flat feature vector, in the source's units:
        standardised here as the training data was) by the current model."""
        for _ in range(_RETRIES):
            loaded = self.current()
            shape = tuple(loaded.model.input_shape)
            size = math.prod(shape)
            if not shape or any(len(r) != size for r in rows):
                raise InvalidParameterError(
                    f"Each input row must hold {size} numbers for model {loaded.model_id} "
                    f"(input shape {list(shape)}); got rows of "
                    f"{sorted({len(r) for r in rows})} numbers."
                )
            X = _finite_inputs(rows, _input_dtype(loaded.model)).reshape(len(rows), *shape)
            X = standardize_rows(self._service.workspace.dataset_spec, X)  # as in training
            out = loaded.model.log_proba(X)
            if not torch.isfinite(out).all():
                row = int((~torch.isfinite(out)).any(dim=1).nonzero()[0])
                raise InvalidParameterError(
                    f"Model {loaded.model_id} gives no finite prediction for input row {row} "
                    "(its values overflow the model); send values of the scale it was trained on."
                )
            if self._current_row()[0] == loaded.model_id:
                return Prediction(loaded.model_id, loaded.sha256, out)
        raise NotFoundError("The current model kept changing while answering; retry the request.")
