"""Activation collection."""

from __future__ import annotations

import sys
import types
from typing import Any

# Imported eagerly (collect.py needs only torch and numpy, like activations.py): the function must be bound
# here *after* the submodule ``probes.collect.collect`` is imported, or that module would shadow it.
from probes.collect.activations import Activations, Features, RaggedTokens
from probes.collect.collect import collect

__all__ = ["Activations", "Features", "RaggedTokens", "collect"]


class _CallablePackage(types.ModuleType):
    """``probes.collect`` is this subpackage once imported, which hides the function ``probes.collect``
    of the public API; calling the package calls the function, so ``probes.collect(model, ...)`` works."""

    def __call__(self, *args: Any, **kwargs: Any) -> Activations:
        return collect(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
