"""Streaming monitors: score every token while a model generates, smooth per row, stop the rows that fire.

Names load lazily so that ``probes.monitor.cli`` (imported by ``probes --help``) does not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "FireEvent": "probes.monitor.events",
    "Monitor": "probes.monitor.monitor",
    "StepScores": "probes.monitor.events",
    "StreamEvent": "probes.monitor.events",
    "Trace": "probes.monitor.trace",
    "TraceRow": "probes.monitor.trace",
}

__all__ = ["FireEvent", "Monitor", "StepScores", "StreamEvent", "Trace", "TraceRow"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'probes.monitor' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover
    from probes.monitor.events import FireEvent, StepScores, StreamEvent
    from probes.monitor.monitor import Monitor
    from probes.monitor.trace import Trace, TraceRow
