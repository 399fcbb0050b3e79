"""Detectors of poisoned or mislabelled training data: a suspicion score per sample.

Every detector is registered in :data:`DETECTORS` and maps ``(model, samples)`` to one
score per sample, higher meaning more suspicious. :func:`detection_scores` scores a
ranking against the planted IDs (precision and recall at ``k``, AUROC).

- ``loss``: the model's cross-entropy on the sample's (possibly wrong) label.
- ``tracin``: TracIn's self-influence (Pruthi et al., NeurIPS 2020) summed over the
  checkpoints kept during training, each weighted by its learning rate.
- ``self-influence``: the same at the final model only: the squared norm of the
  sample's loss gradient over all parameters (for models trained without checkpoints).
- ``spectral``: spectral signatures (Tran, Li and Madry, NeurIPS 2018): within each
  label, the squared projection of the centred penultimate features on their top
  singular vector, divided by the label's mean so labels compare.
- ``activation-clustering``: activation clustering (Chen et al., 2018): within each
  label, the penultimate features reduced by PCA and split by 2-means; members of the
  smaller cluster score the label's silhouette plus one (plus their own silhouette, as a
  tie-break), the rest score their negative share.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from unbake._validation import Interval, Options, validate_params
from unbake.data import Samples
from unbake.data.poison import Planted, attack_success_rate, flip_rates
from unbake.evaluation.ghost import penultimate
from unbake.evaluation.utility import accuracy, per_sample_loss
from unbake.exceptions import InvalidParameterError
from unbake.registry import Registry
from unbake.training import STRATEGIES, TrainedModel, to_log_proba
from unbake.training.trajectory import trajectory

__all__ = [
    "DETECTORS",
    "Detector",
    "attack_harm",
    "detection_scores",
    "squared_grad_norms",
    "top_k",
]


class Detector:
    """Base: ``score(model, samples)`` returns a float array, one per sample."""

    name = "detector"

    def score(self, model: TrainedModel, samples: Samples) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError


_POSITIVE = Interval(int, 1, None)

DETECTORS: Registry[Detector] = Registry("detector", entry_points="unbake.detectors")


@DETECTORS.register("loss")
class LossDetector(Detector):
    """Cross-entropy of each sample under its training label: mislabels fit badly."""

    name = "loss"

    def score(self, model: TrainedModel, samples: Samples) -> np.ndarray:
        return per_sample_loss(model, samples)[0]


def squared_grad_norms(
    model: TrainedModel,
    samples: Samples,
    params: dict[str, torch.Tensor] | None = None,
    *,
    batch_size: int = 256,
    per_sample: str = "auto",
) -> np.ndarray:
    """``‖∇θ ℓ(z; θ)‖²`` for each sample ``z``, over the trainable parameters ``θ``
    (default: the model's own; or ``params``, e.g. a training checkpoint), in float64.

    ``per_sample="layers"`` takes one forward and one backward pass per batch and
    assembles each sample's norm layer by layer from the layer's input and output
    gradient, as Opacus's per-sample gradient samplers do: for a ``Linear`` layer
    ``‖∇W‖² = ‖a‖²‖g‖²`` without forming ``∇W``; for a ``Conv2d``, the per-sample
    gradient from the unfolded input. It needs every parameter in ``θ`` to belong to a
    ``Linear`` on flat input or an ungrouped, zero-padded ``Conv2d``, each called once
    per forward pass (the built-in ``logreg``, ``mlp`` and ``cnn``).
    ``per_sample="vmap"`` computes a batch's per-sample gradients at once
    (``torch.func.vmap`` over ``grad``); ``"loop"`` takes one backward pass per sample
    (any module); ``"auto"`` takes the first of these three that the module allows.
    The three agree to float32 rounding (``tests/test_tracin.py``); ``layers`` costs
    about one training step per batch, where vmap forms every sample's full gradient.
    """
    from torch.func import functional_call, grad, vmap

    module = model.module.eval()
    kind = STRATEGIES.get(model.strategy).output
    device = next(module.parameters()).device
    if params is None:
        params = {k: v for k, v in module.named_parameters() if v.requires_grad}
    params = {k: v.detach() for k, v in params.items()}
    buffers = {k: v.detach() for k, v in module.named_buffers()}

    def loss(p, x, y):
        out = functional_call(module, (p, buffers), (x[None],))
        return -to_log_proba(out, kind)[0].gather(0, y[None])[0]

    def by_vmap(x, y):
        g = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
        return sum(t.flatten(1).double().pow(2).sum(1) for t in g.values())

    def by_loop(x, y):
        p = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        norms = []
        for xi, yi in zip(x, y, strict=True):
            gs = torch.autograd.grad(loss(p, xi, yi), list(p.values()))
            zero = torch.zeros((), dtype=torch.float64, device=device)
            norms.append(sum((t.double().pow(2).sum() for t in gs), zero))
        return torch.stack(norms)

    layers = _layerwise_layers(module, params)  # found once, not per batch

    def by_layers(x, y):
        return _layerwise_norms(module, layers, params, buffers, kind, x, y)

    layers_ok = layers is not None
    if per_sample == "layers" and not layers_ok:
        raise InvalidParameterError(
            "per_sample='layers' needs every parameter in a Linear or a plain Conv2d "
            f"layer, and {type(module).__name__} has others; use per_sample='auto'."
        )
    auto_layers = per_sample == "auto" and layers_ok
    if auto_layers:
        per_sample = "layers"
    run = {"layers": by_layers, "vmap": by_vmap, "loop": by_loop}
    X, y = samples.tensors(device)
    out = []
    for i in range(0, len(y), batch_size):
        xb, yb = X[i : i + batch_size], y[i : i + batch_size]
        if auto_layers:
            try:
                out.append(by_layers(xb, yb).cpu())
                continue
            except InvalidParameterError:  # a layer called twice, say: vmap handles it
                auto_layers, per_sample = False, "auto"
        if per_sample == "auto":
            try:
                out.append(by_vmap(xb, yb).cpu())
                continue
            except RuntimeError:  # an operation vmap cannot batch: one sample at a time
                per_sample = "loop"
        out.append(run[per_sample](xb, yb).cpu())
    return torch.cat(out).numpy() if out else np.empty(0)


#: The most elements of per-sample ``Conv2d`` weight gradients formed at once (64 MiB).
_CONV_CHUNK = 1 << 24


def _layerwise_layers(
    module: torch.nn.Module, params: dict[str, torch.Tensor]
) -> dict[str, torch.nn.Module] | None:
    """Layer name → layer for every layer holding a parameter of ``params``; ``None``
    when some parameter lies elsewhere (or in a layer this path cannot handle)."""
    layers, covered = {}, set()
    for name, mod in module.named_modules():
        plain = isinstance(mod, torch.nn.Linear) or (
            isinstance(mod, torch.nn.Conv2d)
            and mod.groups == 1
            and mod.padding_mode == "zeros"
            and not isinstance(mod.padding, str)
        )
        own = [f"{name}.{p}" if name else p for p, _ in mod.named_parameters(recurse=False)]
        if plain and any(k in params for k in own):
            layers[name] = mod
            covered.update(own)
    return layers if set(params) <= covered else None


def _layerwise_norms(module, layers, params, buffers, kind, x, y) -> torch.Tensor:
    """Per-sample ``‖∇θ ℓ‖²`` (float64) from one forward and backward pass of the batch.

    In eval mode each sample's loss depends on its own output only, so the gradient of
    the summed loss with respect to a layer's output holds every sample's own gradient.
    ``layers`` is :func:`_layerwise_layers`'s answer for ``module`` and ``params``.
    """
    from torch.func import functional_call

    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def keep(name):
        def hook(mod, args, out):
            if name in seen or (isinstance(mod, torch.nn.Linear) and args[0].dim() != 2):
                raise InvalidParameterError(
                    f"per_sample='layers' cannot take layer {name!r} (called twice, or "
                    "on input that is not flat); use per_sample='vmap'."
                )
            seen[name] = (args[0].detach(), out)

        return hook

    handles = [mod.register_forward_hook(keep(n)) for n, mod in layers.items()]
    try:
        with torch.enable_grad():
            p = {k: v.detach().requires_grad_(True) for k, v in params.items()}
            out = functional_call(module, (p, buffers), (x,))
            loss = -to_log_proba(out, kind).gather(1, y[:, None]).sum()
            names = list(seen)
            grads = torch.autograd.grad(loss, [seen[n][1] for n in names])
    finally:
        for h in handles:
            h.remove()
    total = torch.zeros(len(x), dtype=torch.float64, device=x.device)
    for name, g in zip(names, grads, strict=True):
        mod, a = layers[name], seen[name][0]
        prefix = f"{name}." if name else ""
        if isinstance(mod, torch.nn.Linear):
            g2 = g.double().pow(2).sum(1)
            if prefix + "weight" in params:
                total += a.double().pow(2).sum(1) * g2
        else:
            cols = torch.nn.functional.unfold(
                a, mod.kernel_size, dilation=mod.dilation, padding=mod.padding, stride=mod.stride
            )
            g = g.flatten(2)  # (N, C_out, positions)
            if prefix + "weight" in params:
                step = max(1, _CONV_CHUNK // (g.shape[1] * cols.shape[1]))
                for i in range(0, len(g), step):
                    w = torch.bmm(g[i : i + step], cols[i : i + step].transpose(1, 2))
                    total[i : i + step] += w.double().pow(2).sum((1, 2))
            g2 = g.sum(2).double().pow(2).sum(1)
        if prefix + "bias" in params:
            total += g2
    return total


_PER_SAMPLE: dict[str, list[Any]] = {
    "batch_size": [_POSITIVE],
    "per_sample": [Options({"auto", "layers", "vmap", "loop"})],
}


@DETECTORS.register("self-influence")
class SelfInfluence(Detector):
    """Self-influence at the final model only: ``‖∇θ ℓ(z; θ_final)‖²`` over every
    trainable parameter, per sample. The one-checkpoint case of ``tracin`` (up to the
    learning rate), for a model trained without kept checkpoints."""

    name = "self-influence"

    def __init__(self, *, batch_size: int = 256, per_sample: str = "auto") -> None:
        validate_params(
            {"batch_size": batch_size, "per_sample": per_sample}, _PER_SAMPLE, self.name
        )
        self.batch_size = batch_size
        self.per_sample = per_sample

    def score(self, model: TrainedModel, samples: Samples) -> np.ndarray:
        return squared_grad_norms(
            model, samples, batch_size=self.batch_size, per_sample=self.per_sample
        )


@DETECTORS.register("tracin")
class TracInSelfInfluence(SelfInfluence):
    """TracIn self-influence summed over training checkpoints (Pruthi, Liu, Kale and
    Sundararajan, "Estimating Training Data Influence by Tracing Gradient Descent",
    NeurIPS 2020): ``Σᵢ ηᵢ ‖∇θ ℓ(z; θᵢ)‖²`` over the checkpoints ``θᵢ`` kept during
    training, each with its learning rate ``ηᵢ``.

    The model must have been trained with checkpoints kept (``checkpoints=k``, a
    parameter of the monolithic strategy: ``unbake train --param checkpoints=3``).
    """

    name = "tracin"

    def score(self, model: TrainedModel, samples: Samples) -> np.ndarray:
        kept = list(trajectory(model))
        if not kept:
            raise InvalidParameterError(
                "The tracin detector needs the checkpoints kept while the model trained, and "
                "this model has none (trained without checkpoints=N, or edited by an "
                "approximate method); retrain with --param checkpoints=3, or use self-influence."
            )
        total = np.zeros(len(samples))
        for lr, params in kept:
            total += lr * squared_grad_norms(
                model, samples, params, batch_size=self.batch_size, per_sample=self.per_sample
            )
        return total


def _per_label(samples: Samples, feats: np.ndarray, fn) -> np.ndarray:
    """Apply ``fn(features of one label) -> scores`` to each label's rows."""
    scores = np.zeros(len(samples))
    for label in np.unique(samples.y):
        rows = np.flatnonzero(samples.y == label)
        if len(rows) >= 3:
            scores[rows] = fn(feats[rows])
    return scores


@DETECTORS.register("spectral")
class SpectralSignature(Detector):
    """Spectral signatures (Tran, Li and Madry, NeurIPS 2018), per label."""

    name = "spectral"

    def score(self, model: TrainedModel, samples: Samples) -> np.ndarray:
        def signature(f: np.ndarray) -> np.ndarray:
            centred = f - f.mean(0)
            _, _, vt = np.linalg.svd(centred, full_matrices=False)
            s = (centred @ vt[0]) ** 2
            return s / max(s.mean(), 1e-12)

        return _per_label(samples, penultimate(model, np.asarray(samples.X)), signature)


@DETECTORS.register("activation-clustering")
class ActivationClustering(Detector):
    """Activation clustering (Chen et al., 2018), per label: PCA, 2-means, silhouette."""

    name = "activation-clustering"

    def __init__(self, *, components: int = 10, seed: int = 0) -> None:
        validate_params(
            {"components": components, "seed": seed},
            {"components": [_POSITIVE], "seed": [Interval(int, 0, None)]},
            self.name,
        )
        self.components = components
        self.seed = seed

    def score(self, model: TrainedModel, samples: Samples) -> np.ndarray:
        from sklearn.cluster import KMeans
        from sklearn.decomposition import PCA
        from sklearn.metrics import silhouette_samples

        def cluster(f: np.ndarray) -> np.ndarray:
            k = min(self.components, f.shape[1], len(f) - 1)
            z = PCA(n_components=k, random_state=self.seed).fit_transform(f)
            labels = KMeans(2, n_init=4, random_state=self.seed).fit_predict(z)
            if len(np.unique(labels)) < 2:
                return np.zeros(len(f))
            small = int(np.bincount(labels, minlength=2).argmin())
            sil = silhouette_samples(z, labels)
            share = np.mean(labels == small)
            return np.where(labels == small, 1 + sil.mean() + 0.01 * sil, -share)

        return _per_label(samples, penultimate(model, np.asarray(samples.X)), cluster)


def detection_scores(
    scores: np.ndarray,
    ids: Sequence[str] | np.ndarray,
    planted: Sequence[str],
    ks: Sequence[int],
) -> dict[str, float]:
    """Precision and recall of the top ``k`` (for each ``k``) and AUROC against ``planted``.

    >>> s = detection_scores(np.array([0.9, 0.1, 0.8, 0.2]), ["a", "b", "c", "d"], ["a", "d"], [2])
    >>> s["precision@2"], s["recall@2"], s["auroc"]
    (0.5, 0.5, 0.75)
    """
    from sklearn.metrics import roc_auc_score

    truth = np.isin(np.asarray(ids, dtype=str), np.asarray(list(planted), dtype=str))
    if not truth.any() or truth.all():
        raise InvalidParameterError(
            "Detection is scored against planted samples, but none (or all) of the scored "
            "samples are planted; score a training set that holds both."
        )
    order = np.argsort(-np.asarray(scores, float), kind="stable")
    out: dict[str, float] = {}
    for k in ks:
        hits = int(truth[order[:k]].sum())
        out[f"precision@{k}"] = hits / k
        out[f"recall@{k}"] = hits / int(truth.sum())
    out["auroc"] = float(roc_auc_score(truth, scores))
    return out


def top_k(scores: np.ndarray, ids: Sequence[str] | np.ndarray, k: int) -> list[str]:
    """The ``k`` IDs with the highest scores (ties broken by order)."""
    order = np.argsort(-np.asarray(scores, float), kind="stable")
    return [str(ids[i]) for i in order[:k]]


def attack_harm(model: TrainedModel, test: Samples, plant: Planted | None) -> dict[str, float]:
    """The harm a planted attack leaves in ``model``, in percent on the clean ``test`` set:
    ``ta`` (clean test accuracy) always; for a backdoor ``asr`` (the attack success
    rate); for a label flip ``source_acc`` (accuracy on the source class) and
    ``flip_rate`` (the share of the source class classified as the target)."""

    def log_proba(X):
        return model.log_proba(X).numpy()

    out = {"ta": accuracy(model, test)}
    if plant is not None and plant.kind == "backdoor":
        out["asr"] = 100.0 * attack_success_rate(log_proba, test, plant)
    elif plant is not None and plant.kind == "flip":
        source_acc, flip_rate = flip_rates(log_proba, test, plant)
        out |= {"source_acc": 100.0 * source_acc, "flip_rate": 100.0 * flip_rate}
    return out
