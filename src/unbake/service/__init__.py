"""The deletion service: the deletion policy, the request queue and its worker.

Import the submodules you need (``unbake.service.policy``); this package imports nothing
heavy on its own.
"""
