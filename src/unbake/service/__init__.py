"""The deletion service: durable request queue, worker, and (later) policy and REST API."""

from unbake.service.deletion import DeletionService, Submitted

__all__ = ["DeletionService", "Submitted"]
