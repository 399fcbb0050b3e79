"""The deletion service: the durable request queue and its worker, the deletion policy
(:mod:`unbake.service.policy`) and, above them, the REST API."""

from unbake.service.deletion import DeletionService, Submitted

__all__ = ["DeletionService", "Submitted"]
