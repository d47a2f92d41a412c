"""Streaming monitors: score every token while a model generates, smooth per row, stop the rows that fire."""

from probes.monitor.monitor import FireEvent, Monitor, StepScores, StreamEvent
from probes.monitor.trace import Trace, TraceRow

__all__ = ["FireEvent", "Monitor", "StepScores", "StreamEvent", "Trace", "TraceRow"]
