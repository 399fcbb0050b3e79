"""The unbake exception tree.

Every error that a user can cause derives from :class:`UnbakeError` and carries a
one-line message that names the cause and the fix. The CLI prints that line and
exits with status 2; the Python API lets it propagate.
"""

from __future__ import annotations

import os
import re

__all__ = [
    "CertificateError",
    "DatasetError",
    "EmptyRequestError",
    "IntegrityError",
    "InvalidParameterError",
    "NotFittedError",
    "NotFoundError",
    "NotPositiveDefiniteError",
    "UnbakeError",
    "UnknownNameError",
    "UnknownSampleError",
    "UnsupportedModelError",
    "UserCodeError",
    "WorkspaceError",
]


class UnbakeError(Exception):
    """Base class of every error unbake raises on purpose."""


class InvalidParameterError(UnbakeError, ValueError):
    """A hyperparameter or argument has a value outside its declared constraint."""


class NotPositiveDefiniteError(InvalidParameterError, ArithmeticError):
    """A solver met a singular or indefinite matrix; callers re-raise naming their fix."""


class UnknownNameError(UnbakeError, KeyError):
    """A registry lookup named something that is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it a plain line
        return str(self.args[0]) if self.args else ""


class DatasetError(UnbakeError, ValueError):
    """A dataset is missing, malformed, or inconsistent with the workspace."""


class EmptyRequestError(UnbakeError, ValueError):
    """A deletion request selected no samples."""


class UnknownSampleError(UnbakeError, KeyError):
    """A deletion request named sample IDs that are unknown or already forgotten."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class NotFoundError(UnbakeError, KeyError):
    """A request, model or other record named by ID does not exist."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class IntegrityError(UnbakeError):
    """Stored state failed a hash or consistency check and is not trusted."""


class CertificateError(IntegrityError):
    """A deletion certificate or a public key that is malformed or does not verify."""


class WorkspaceError(UnbakeError):
    """The workspace is missing, locked, or in a state that forbids the operation."""


class UnsupportedModelError(UnbakeError, TypeError):
    """A method was asked to unlearn from a model it cannot handle."""


class UserCodeError(UnbakeError):
    """Code the user handed to unbake (a training function) raised or broke its protocol."""


class NotFittedError(UnbakeError, AttributeError):
    """An estimator was used before ``fit``."""


#: An absolute filesystem path of two parts or more, as a message written for a local
#: operator may hold (``Catalog /srv/ws/catalog.sqlite is busy``); not a URL, not an API
#: route. Error bodies show ``<path>`` instead: a path tells a caller how the server is
#: laid out, and nothing it could act on.
_ABSOLUTE_PATH = re.compile(r"(?<![\w./~>:-])/(?!v1/)(?:[^\s'\"`/]+/)+[^\s'\"`/,;:)]*(?<!\.)")


def without_paths(text: str, roots: tuple[str | os.PathLike, ...] = ()) -> str:
    """``text`` with each of ``roots`` (a workspace folder) shown as ``<workspace>`` and
    any other absolute path as ``<path>``: an error message as shown to a remote caller
    (the REST API's bodies, a reason recorded where a submitter reads it).

    >>> without_paths("Workspace /srv/ws is read-only (chmod -R u+w /srv/ws).", ("/srv/ws",))
    'Workspace <workspace> is read-only (chmod -R u+w <workspace>).'
    >>> without_paths("Checkpoint /a/b/m.safetensors is missing; see GET /v1/requests.")
    'Checkpoint <path> is missing; see GET /v1/requests.'
    """
    folders = {str(r) for r in roots} | {os.path.realpath(r) for r in roots}
    for root in sorted((f for f in folders if len(f) > 1), key=len, reverse=True):
        text = text.replace(root, "<workspace>")
    return _ABSOLUTE_PATH.sub("<path>", text)
