"""The ghost check: does a forgotten sample's neighbourhood still carry its influence?

A method can erase the forget samples' own predictions while leaving the model bent
around them. For each forget sample, take its nearest *training* neighbours in the
original model's penultimate features, and compare the confidence the unlearned model
gives them with what models retrained without the forget set give them. A gap that
retraining's own spread cannot explain is influence left behind.
"""

from __future__ import annotations

import numpy as np
import torch

from unbake.data import RowView
from unbake.training import TrainedModel

__all__ = ["ghost_gap", "nearest_neighbours", "penultimate"]


@torch.no_grad()
def penultimate(model: TrainedModel, X: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """The module's ``features(x)`` (the input to its head) where it has one, else the input.

    The built-in MLP, CNN and ResNet-18 expose ``features``; for linear models and
    ensembles the flattened input is the honest stand-in. The features are computed
    ``batch_size`` rows at a time on the model's device (as :meth:`TrainedModel.log_proba`
    does): one pass over a whole training set would hold every row's intermediate
    activations at once (11 GB for Fashion-MNIST's 59k images through the ``cnn``).
    """
    features = getattr(model.module, "features", None)
    if not isinstance(features, torch.nn.Module):
        return torch.from_numpy(np.asarray(X)).flatten(1).double().numpy()
    x = X.torch_rows() if isinstance(X, RowView) else torch.from_numpy(X)  # streamed: batches
    model.module.eval()
    device = next(model.module.parameters()).device
    parts = [
        features(x[i : i + batch_size].to(device)).flatten(1).double().cpu()
        for i in range(0, max(len(x), 1), batch_size)  # one (empty) pass for no rows
    ]
    return torch.cat(parts).numpy()


def nearest_neighbours(query: np.ndarray, pool: np.ndarray, k: int) -> np.ndarray:
    """``(len(query), k)`` indices of each query row's ``k`` nearest pool rows (Euclidean).

    >>> nearest_neighbours(np.array([[0.0], [10.0]]), np.array([[9.0], [1.0], [2.0]]), 1).tolist()
    [[1], [0]]
    """
    from sklearn.neighbors import NearestNeighbors

    k = min(k, len(pool))
    return NearestNeighbors(n_neighbors=k).fit(pool).kneighbors(query, return_distance=False)


def ghost_gap(unlearned: np.ndarray, retrained: np.ndarray) -> float:
    """Mean over neighbours of (unlearned − retrained) confidence: 0 when nothing is left.

    >>> ghost_gap(np.array([2.0, 4.0]), np.array([1.0, 1.0]))
    2.0
    """
    return float(np.mean(np.asarray(unlearned, float) - np.asarray(retrained, float)))
