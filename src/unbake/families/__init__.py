"""The exact and certified families, one package each, owning training and unlearning.

Each family registers its training strategy (in :data:`unbake.training.STRATEGIES`) and
its unlearning method (in :data:`unbake.methods.METHODS`) on import; ``import unbake``
imports this package, so both are always available. Families sit above
:mod:`unbake.training` and :mod:`unbake.methods`, which never import them.
"""

from unbake.families import certified, sisa

__all__ = ["certified", "sisa"]
