"""Resolver: the DAG's first, light, never-cached step: the dataset's content version and the store's champion."""

from components.resolver.component import build, resolver

__all__ = ["build", "resolver"]
