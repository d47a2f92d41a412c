"""Pydantic validation errors turned into one line per key: ``file: a.b.c: what is wrong (did you mean ...)``."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError

from probes.config.run import RunConfig


def _loc(loc: tuple[Any, ...]) -> str:
    # Drop pydantic's internal union/function tags so the path reads like the YAML.
    parts = [str(p) for p in loc if not (isinstance(p, str) and ("[" in p or p.startswith("function-")))]
    return ".".join(parts)


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The allowed keys of the section at ``loc`` (for 'did you mean' hints)."""
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(str(part))
        if field is None:
            return []
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        nxt = None
        for c in candidates:
            if isinstance(c, type) and issubclass(c, BaseModel):
                nxt = c
                break
            for sub in getattr(c, "__args__", ()):  # dict[str, DatasetSpec]
                if isinstance(sub, type) and issubclass(sub, BaseModel):
                    nxt = sub
        current = nxt
        if current is None:
            return []
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def format_errors(exc: ValidationError, source: str, schema: type[BaseModel] = RunConfig) -> str:
    """One line per invalid key of ``schema`` (a run config unless another is given)."""
    lines: list[str] = []
    seen: set[str] = set()
    for err in exc.errors():
        loc = tuple(err["loc"])
        path = _loc(loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            parent = tuple(p for p in loc[:-1] if not (isinstance(p, str) and "[" in p))
            allowed = _allowed_keys(schema, parent)
            hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            msg = f"unknown key {str(loc[-1])!r}"
            msg += f" (did you mean {hint[0]!r}?)" if hint else ""
            msg += f"; allowed here: {', '.join(allowed)}" if allowed else ""
        elif err["type"] == "missing":
            msg = "required key is missing"
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if "input" in err and err["type"] not in {"value_error", "assertion_error"}:
                msg += f" (got {err['input']!r})"
        # A union produces one error per member for the same key: report the key once.
        if path in seen:
            continue
        seen.add(path)
        lines.append(f"{source}: {path}: {msg}")
    return "\n".join(lines)
