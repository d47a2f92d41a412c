"""Reading text files as strict UTF-8, with decode errors that name the file, line and column.

Data files, dataset cards and configs are UTF-8. A stray Latin-1 or Windows-1252 byte used to surface as a
``UnicodeDecodeError ... in position 2517`` traceback; here it becomes the caller's named error (a
``DatasetError`` or ``ConfigError``) saying where the byte is and how to fix the file.
"""

from __future__ import annotations

from pathlib import Path

from probes.errors import ProbesError


def utf8_problem(raw: bytes, exc: UnicodeDecodeError) -> tuple[int, int, str]:
    """``(line, column, message)`` of the first undecodable byte of ``raw``: line and column count from 1, the
    column in characters."""
    start = exc.start
    line_start = raw.rfind(b"\n", 0, start) + 1
    line = raw.count(b"\n", 0, start) + 1
    column = len(raw[line_start:start].decode("utf-8", errors="replace")) + 1
    bad = raw[exc.start : exc.end].hex(" ")
    message = (
        f"not valid UTF-8 (byte 0x{bad}). Save the file as UTF-8, e.g. `iconv -f cp1252 -t utf-8 IN > OUT` "
        "if it was written as Windows-1252/Latin-1"
    )
    return line, column, message


def read_utf8(path: str | Path, error: type[ProbesError]) -> str:
    """The text of ``path``, decoded as strict UTF-8 (a leading BOM is dropped); raises ``error`` naming the
    file, line and column of the first byte that is not UTF-8."""
    raw = Path(path).read_bytes()
    raw = raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw  # offsets below must index these bytes
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column, message = utf8_problem(raw, exc)
        raise error(f"{path}, line {line}, column {column}: {message}.") from None
