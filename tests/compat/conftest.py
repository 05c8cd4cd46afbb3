"""Fixtures of the differential tests against Azure's own packages."""

from tests.compat.azure_env import azure_env

__all__ = ["azure_env"]
