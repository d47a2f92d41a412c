"""The command line's exit codes and its one error handler, shared by ``probes`` and the lazily loaded
commands (``probes generate``, ``probes monitor``) without those importing the CLI module back.

Exit codes (scripts can rely on them): ``0`` success; ``1`` the run failed; ``2`` bad input (config,
dataset, bundle, a model that cannot be found or reached, a bad option); ``3`` tracking failed with
``tracking.on_error: fail`` (local results are still written).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer
from rich.console import Console

from probes.errors import (
    BundleError,
    ConfigError,
    DatasetError,
    ModelFileError,
    ModelLoadError,
    ProbesError,
    TrackingError,
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_TRACKING = 3

err = Console(stderr=True, highlight=False)


def fail(code: int, message: str) -> NoReturn:
    from rich.markup import escape

    # Escaped: messages name things like probes[sad].thresholds, which rich would read as a style tag.
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def exit_on_errors() -> Iterator[None]:
    """Map named errors onto the documented exit codes with a one-paragraph message."""
    try:
        yield
    except typer.Exit:
        raise
    except (ConfigError, DatasetError, BundleError, ModelFileError, ModelLoadError) as exc:
        fail(EXIT_BAD_INPUT, str(exc))
    except TrackingError as exc:
        fail(EXIT_TRACKING, str(exc))
    except ProbesError as exc:
        fail(EXIT_FAILED, f"{type(exc).__name__}: {exc}")
    except KeyboardInterrupt:
        fail(EXIT_FAILED, "interrupted")
    except Exception as exc:  # a bug or an environment problem: show where
        err.print_exception(show_locals=False, max_frames=8)
        fail(EXIT_FAILED, f"run failed: {type(exc).__name__}: {exc}")
