"""Activation collection."""

from probes.collect.activations import Activations, Features, RaggedTokens

__all__ = ["Activations", "Features", "RaggedTokens", "collect"]


def __getattr__(name: str):
    if name == "collect":
        from probes.collect.collect import collect

        return collect
    raise AttributeError(name)
