"""The ``probes`` command line.

Exit codes (scripts can rely on them):

- ``0`` success;
- ``1`` the run failed (an unexpected error, a model that cannot be loaded, ...);
- ``2`` bad input: an invalid config, a malformed or missing dataset, a missing, corrupted, edited or unsigned
  probe bundle, a bad option (also click's usage errors);
- ``3`` tracking failed and the config says ``tracking.on_error: fail`` (local results are still written).

Heavy libraries (torch, transformers, mlflow) are imported inside the commands, so ``probes --help`` is
instant.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from probes.cli_errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, EXIT_TRACKING, err
from probes.cli_errors import exit_on_errors as _errors
from probes.errors import ConfigError, DatasetError

__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILED", "EXIT_OK", "EXIT_TRACKING", "app"]

# ----------------------------------------------------------------------------------------------------------
# `probes monitor`, `probes generate` and `probes lens`: registered by <module>.register(app), loaded only when invoked
# (they import torch; `probes --help` must not).

_LAZY_COMMANDS = {
    "monitor": (
        "probes/monitor/cli.py",
        "Run a probe bundle as a streaming monitor on a model's generations (probes monitor --help).",
    ),
    "calibrate": (
        "probes/monitor/cli.py",
        "Set a bundle's generation-level threshold on the model's own benign generations (probes calibrate --help).",
    ),
    "generate": (
        "probes/generate/cli.py",
        "Sample a model's own replies to a dataset's prompts: an on-policy dataset (probes generate --help).",
    ),
    "lens": (
        "probes/lens/cli.py",
        "Print and plot the logit (or tuned) lens of a prompt: the top token at every layer (probes lens --help).",
    ),
}


class _LazyGroup(TyperGroup):
    """A Typer group whose lazy commands are listed from a static help line and imported on first use."""

    _formatting = False

    def _available(self) -> list[str]:
        root = Path(__file__).resolve().parent.parent
        return [name for name, (path, _) in _LAZY_COMMANDS.items() if (root / path).is_file()]

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = list(super().list_commands(ctx))
        return names + [n for n in self._available() if n not in names]

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self._formatting = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._formatting = False

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None or cmd_name not in self._available():
            return command
        if self._formatting:  # listing only: a placeholder with the help line, no import
            return click.Command(cmd_name, help=_LAZY_COMMANDS[cmd_name][1])
        module = _LAZY_COMMANDS[cmd_name][0].removesuffix(".py").replace("/", ".")
        try:
            register = importlib.import_module(module).register
        except ImportError as exc:
            err.print(f"[bold red]error:[/] `probes {cmd_name}` is unavailable: {exc}")
            return None
        extra = typer.Typer()
        register(extra)
        group = typer.main.get_group(extra)
        for name in group.list_commands(ctx):
            found = group.get_command(ctx, name)
            if found is not None and name not in self.commands:
                self.add_command(found, name)
        return super().get_command(ctx, cmd_name)


app = typer.Typer(
    name="probes",
    cls=_LazyGroup,
    help=(
        "Train, evaluate and track probes on a language model's activations.\n\n"
        "Exit codes: 0 ok, 1 run failed, 2 bad config/data/bundle/usage, 3 tracking failed with "
        "tracking.on_error=fail."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
datasets_app = typer.Typer(help="Inspect contrast datasets.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")

# Messages and progress go to stderr; results (tables, JSON) to stdout so they can be piped. Rich falls back
# to 80 columns when output is not a terminal (CI logs, pipes), too narrow for the result tables.
out = Console(highlight=False)


def _show(renderable: Any) -> None:
    if out.is_terminal:
        out.print(renderable)
    else:
        Console(file=out.file, highlight=False, width=max(out.width, 140)).print(renderable)


EngineOption = Annotated[
    str | None,
    typer.Option(
        "--engine",
        metavar="local|ray",
        help="Where forward passes run (same as --set engine.kind=...); the rest of engine: comes from CONFIG.",
        show_default=False,
    ),
]


def _with_engine(overrides: list[str] | None, engine: str | None) -> list[str]:
    return [*(overrides or []), *([f"engine.kind={engine}"] if engine is not None else [])]


SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        metavar="KEY=VALUE",
        help="Override a config value (repeatable), e.g. --set data.train.limit=200 --set layers=[2,4]. "
        "VALUE is parsed as YAML; overrides are recorded in the run.",
    ),
]
ConfigArg = Annotated[
    Path,
    typer.Argument(
        help="A run config (YAML), e.g. training/quickstart.yaml. Relative paths inside it resolve against "
        "the current directory.",
        show_default=False,
    ),
]


def _load(config: Path, overrides: list[str] | None) -> Any:
    from probes.config import load_config

    return load_config(config, overrides or [])


class _Reporter:
    """Stage messages from the pipeline, shown as a live status line with elapsed times."""

    def __init__(self, console: Console) -> None:
        self.console = console

    @contextmanager
    def stage(self, message: str) -> Iterator[None]:
        import time

        start = time.perf_counter()
        with self.console.status(f"[cyan]{message}[/]…"):
            yield
        self.console.print(f"[green]✓[/] {message} [dim]({time.perf_counter() - start:.1f}s)[/]")

    def info(self, message: str) -> None:
        self.console.print(message, soft_wrap=True)

    def warn(self, message: str) -> None:
        self.console.print(f"[yellow]warning:[/] {message}", soft_wrap=True)


# ----------------------------------------------------------------------------------------------------------
# run / collect / train / evaluate


@app.command()
def run(
    config: ConfigArg,
    set_: SetOption = None,
    no_track: Annotated[
        bool, typer.Option("--no-track", help="Do not log to MLflow (same as --set tracking.enabled=false).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run summary as JSON on stdout.")] = False,
    engine: EngineOption = None,
) -> None:
    """Run a whole experiment from a YAML config and print the result table.

    Collect activations (cached) → layer sweep → choose the layer on validation → evaluate on the test,
    eval and control sets → write report.json, plots and the probe bundle to
    OUTPUT_DIR/NAME-TIMESTAMP/ → log everything to MLflow.
    """
    overrides = _with_engine(set_, engine)
    if no_track:
        overrides.append("tracking.enabled=false")
    with _errors():
        cfg = _load(config, overrides)
        from probes.pipeline import run as run_pipeline

        result = run_pipeline(cfg, reporter=_Reporter(err))
        if as_json:
            out.print_json(json.dumps(result.summary()))
        else:
            _show(result.table())
        err.print(f"Outputs: {result.run_dir}")
        _show_tracking(result.tracking)


def _show_tracking(tracking: Any) -> None:
    if tracking is not None and tracking.tracked:  # (the pipeline already warned when it was not)
        from rich.markup import escape

        err.print(f"[green]{escape(tracking.message)}[/]", soft_wrap=True)
        if tracking.model_uri:
            err.print(f"Probe model: mlflow.pyfunc.load_model({tracking.model_uri!r})", soft_wrap=True)
        if tracking.text_model_uri:
            err.print(
                f"Text model: mlflow.pyfunc.load_model({tracking.text_model_uri!r}).predict(['some text'])",
                soft_wrap=True,
            )


@app.command()
def collect(config: ConfigArg, set_: SetOption = None, engine: EngineOption = None) -> None:
    """Collect and cache the activations of every dataset in CONFIG, without training.

    A later `probes run` / `probes train` with the same model, layers, pooling and data reads the cache,
    whichever engine (local or ray) wrote it.
    """
    with _errors():
        cfg = _load(config, _with_engine(set_, engine))
        from probes.pipeline import collect_stage

        summary = collect_stage(cfg, reporter=_Reporter(err))
        table = Table(title="Collected activations")
        for column in ("dataset", "rows", "sites", "dim", "cache"):
            table.add_column(column)
        for row in summary:
            table.add_row(*(str(row[c]) for c in ("dataset", "rows", "sites", "dim", "cache")))
        _show(table)


@app.command()
def train(config: ConfigArg, set_: SetOption = None, engine: EngineOption = None) -> None:
    """Train and save a probe bundle, without the test-set evaluation.

    Collect → layer sweep → choose the layer on validation → save the bundle, with thresholds calibrated on
    the control set when CONFIG has one. Use `probes run` for the full evaluation.
    """
    with _errors():
        cfg = _load(config, _with_engine(set_, engine))
        from probes.pipeline import train_stage

        result = train_stage(cfg, reporter=_Reporter(err))
        _show(result.table())
        err.print(f"Bundle: {result.bundle_dir}")
        _show_tracking(result.tracking)


@app.command()
def evaluate(
    run_dir: Annotated[
        Path,
        typer.Argument(help="A run folder written by `probes run` / `probes train`.", show_default=False),
    ],
    data: Annotated[
        Path, typer.Option("--data", "-d", help="Dataset to evaluate on (folder, .jsonl/.csv/.parquet).")
    ],
    control: Annotated[
        Path | None,
        typer.Option(
            "--control", "-c", help="Benign control set: reports the FPR at the bundle's threshold."
        ),
    ] = None,
    benign: Annotated[
        list[Path] | None,
        typer.Option(
            "--benign",
            "-b",
            help="A second benign set (repeatable): the bundle's detectors' false-alarm rate on traffic they "
            "were not calibrated on, with its exact interval.",
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Use at most this many rows of each dataset.")] = None,
    device: Annotated[str | None, typer.Option(help="Override the run's model.device, e.g. cuda.")] = None,
) -> None:
    """Evaluate a run's saved probe on a new dataset.

    Loads RUN_DIR/bundle and the run's model, collects activations of --data (and --control), prints AUROC
    with CIs and the rates at the bundle's saved threshold, and writes RUN_DIR/evaluations/DATASET.json.
    A bundle's anomaly detectors get AUROC of --data against --control, the detection rate at their
    false-alarm rate, and their false alarms on --control and each --benign set (exact intervals).
    """
    with _errors():
        from probes.pipeline import evaluate_run

        result = evaluate_run(
            run_dir,
            data,
            control=control,
            benign=benign or [],
            limit=limit,
            device=device,
            reporter=_Reporter(err),
        )
        _show(result.table())
        err.print(f"Report: {result.path}")


# ----------------------------------------------------------------------------------------------------------
# validate / datasets show / pull


def _is_config(path: Path) -> bool:
    return path.suffix in {".yaml", ".yml"} and path.is_file() and path.name != "card.yaml"


@app.command()
def validate(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="Run configs (.yaml) and/or datasets (folders or files) to check.", show_default=False
        ),
    ],
    set_: SetOption = None,
) -> None:
    """Check configs and datasets without loading a model.

    Configs: schema, dataset files, cards, labels, splits, holdout values, probe parameters (generate configs:
    schema, the dataset, a turn to answer in every row). Datasets:
    rows, labels, targets, card. Exit 0 when everything is valid, 2 otherwise.
    """
    from rich.markup import escape

    from probes.config.generate import is_generate_config
    from probes.pipeline import validate_config, validate_dataset

    failures = 0
    for path in paths:
        try:
            if _is_config(path) and is_generate_config(path):
                from probes.generate.cli import validate_generate_config

                lines = validate_generate_config(path, set_ or [])
            else:
                lines = validate_config(path, set_ or []) if _is_config(path) else validate_dataset(path)
        except (ConfigError, DatasetError, FileNotFoundError) as exc:
            failures += 1
            err.print(f"[bold red]✗[/] {escape(str(path))}\n{escape(str(exc))}", soft_wrap=True)
            continue
        except Exception as exc:  # an unreadable file should still be a clear, per-path failure
            failures += 1
            err.print(
                f"[bold red]✗[/] {escape(str(path))}: {type(exc).__name__}: {escape(str(exc))}",
                soft_wrap=True,
            )
            continue
        out.print(f"[green]✓[/] {path}", soft_wrap=True)
        for line in lines:
            out.print(f"    {line}", soft_wrap=True)
    if failures:
        err.print(f"[bold red]{failures} of {len(paths)} invalid[/]")
        raise typer.Exit(EXIT_BAD_INPUT)


@datasets_app.command("show")
def datasets_show(
    path: Annotated[Path, typer.Argument(help="A dataset folder or file.", show_default=False)],
    rows: Annotated[int, typer.Option("--rows", "-n", help="How many example rows to print.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Show a dataset's card, label balance, lengths, condition tags and a few rows."""
    with _errors():
        from probes.data import load_dataset

        ds = load_dataset(str(path))
        summary = ds.summary()
        if as_json:
            out.print_json(
                json.dumps({"card": ds.card.model_dump(mode="json"), "summary": summary}, default=str)
            )
            return
        _print_dataset(ds, summary, rows)


def _print_dataset(ds: Any, summary: dict[str, Any], rows: int) -> None:
    card = ds.card
    out.rule(f"[bold]{summary['name']}[/]")
    info = Table.grid(padding=(0, 2))
    info.add_column(style="bold")
    info.add_column()
    for key in ("description", "source", "license", "how_made"):
        value = getattr(card, key, None)
        if value:
            info.add_row(key, str(value).strip())
    neg, pos = card.label_names
    info.add_row("labels", f"0 = {neg}, 1 = {pos} (positive class: the state a probe detects)")
    confounds = getattr(card, "confounds", None)
    if confounds:
        info.add_row(
            "confounds",
            "\n".join(f"• {c}" for c in confounds) if isinstance(confounds, list | tuple) else str(confounds),
        )
    _show(info)

    stats = Table(title="Summary", show_header=False)
    stats.add_column(style="bold")
    stats.add_column()
    stats.add_row("rows", str(summary["n"]))
    stats.add_row(
        "labels",
        ", ".join(f"{k}: {v}" for k, v in summary["labels"].items())
        + f" ({summary['positive_fraction']:.1%} positive)",
    )
    stats.add_row("kinds", ", ".join(f"{k}: {v}" for k, v in summary["kinds"].items()))
    stats.add_row("with target", str(summary["with_target"]))
    g = summary["groups"]
    stats.add_row(
        "groups", f"{g['n']} (size {g['size']['min']}–{g['size']['max']}, mean {g['size']['mean']})"
    )
    c = summary["text_chars"]
    stats.add_row("text chars", f"min {c['min']}, median {c['median']:g}, mean {c['mean']}, max {c['max']}")
    for key, counts in summary.get("conditions", {}).items():
        shown = ", ".join(f"{k}: {v}" for k, v in list(counts.items())[:12])
        more = f", … ({len(counts)} values)" if len(counts) > 12 else ""
        stats.add_row(f"condition {key}", shown + more)
    if "splits" in summary:
        stats.add_row("splits", ", ".join(f"{k}: {v}" for k, v in summary["splits"].items()))
    stats.add_row("fingerprint", summary["fingerprint"][:16])
    _show(stats)

    if rows > 0 and len(ds):
        table = Table(title=f"First {min(rows, len(ds))} rows", show_lines=True)
        for column in ("id", "label", "group", "text", "target"):
            table.add_column(column, overflow="fold")
        texts, targets = ds.texts, ds.target_texts
        for i in range(min(rows, len(ds))):
            ex = ds[i]
            table.add_row(
                ex.id,
                card.label_names[ex.label],
                str(ex.group or ""),
                _clip(texts[i], 300),
                _clip(targets[i], 120),
            )
        _show(table)


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


@app.command()
def pull(
    run_id: Annotated[
        str, typer.Argument(help="MLflow run id (shown by `probes run` and in the MLflow UI).")
    ],
    to: Annotated[Path, typer.Option("--to", help="Folder to download the run's probe bundle into.")],
    tracking_uri: Annotated[
        str | None,
        typer.Option(help="MLflow tracking URI; default $MLFLOW_TRACKING_URI, else ./mlflow.db."),
    ] = None,
) -> None:
    """Download a tracked run's probe bundle into a folder.

    The bundle (safetensors + JSON) is checked against its digest (and signature, with a key configured)
    before this returns.
    """
    with _errors():
        from probes.track import pull as pull_bundle

        bundle = pull_bundle(run_id, to, tracking_uri=tracking_uri)
        out.print(f"Bundle of run {run_id} → {bundle}")


def main() -> None:  # pragma: no cover - console entry point alternative
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
