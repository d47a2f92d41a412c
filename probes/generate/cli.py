"""``probes generate CONFIG``: registered on the main app by :func:`register` (imported only when invoked)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Annotated, Any

import typer

HELP = (
    "Sample the model's own replies to the prompts of CONFIG's dataset and write them as a new dataset "
    "folder (same ids, labels, groups and conditions; the target is the generated reply).\n\n"
    "Batched and length-sorted, with a progress bar; an interrupted run resumes where it stopped when run "
    "again with the same config. The output card records the model, the source dataset and every sampling "
    "setting. Exit codes: 0 ok, 1 failed, 2 bad config, data or usage."
)


def register(app: typer.Typer) -> None:
    """Add the ``generate`` command to ``app``."""

    @app.command("generate", help=HELP)
    def generate_command(
        config: Annotated[
            Path, typer.Argument(help="A generate config (YAML), e.g. training/generate_*.yaml.")
        ],
        set_: Annotated[
            list[str] | None,
            typer.Option("--set", "-s", metavar="KEY=VALUE", help="Override a config value (repeatable)."),
        ] = None,
        engine: Annotated[
            str | None,
            typer.Option(
                "--engine",
                metavar="local|ray",
                help="Where generation runs (same as --set engine.kind=...); the rest of engine: from CONFIG.",
                show_default=False,
            ),
        ] = None,
    ) -> None:
        from rich.console import Console

        from probes.cli_errors import exit_on_errors

        err = Console(stderr=True, highlight=False)
        with exit_on_errors():
            from probes.config.generate import load_generate_config

            overrides = [*(set_ or []), *([f"engine.kind={engine}"] if engine is not None else [])]
            cfg = load_generate_config(config, overrides)
            out = run_generate(cfg, err)
            err.print(f"[green]✓[/] wrote {out}", soft_wrap=True)
            typer.echo(str(out))


def run_generate(cfg, console) -> Path:
    """Load the model and the dataset of a :class:`~probes.config.generate.GenerateConfig`, generate, write."""
    import time

    from probes.generate.core import SamplingSettings, generate_dataset
    from probes.models import load_model
    from probes.pipeline import load_spec

    dataset = load_spec(cfg.data, seed=cfg.sampling.seed, what="data")
    start = time.perf_counter()
    model, tokenizer = load_model(
        cfg.model.name_or_path,
        dtype=cfg.model.dtype,
        device=cfg.model.device,
        revision=cfg.model.revision,
        layers_attr=cfg.model.layers_attr,
        **({"device_map": cfg.model.device_map} if cfg.model.device_map else {}),
    )
    console.print(
        f"[green]✓[/] model {cfg.model.name_or_path} ({time.perf_counter() - start:.1f}s); "
        f"{len(dataset)} prompts from {dataset.source}",
        soft_wrap=True,
    )
    sampling = SamplingSettings(**cfg.sampling.model_dump())
    with _engine(cfg) as engine:
        result = generate_dataset(
            model,
            tokenizer,
            dataset,
            cfg.output,
            sampling=sampling,
            batch_size=cfg.batch_size,
            max_prompt_tokens=cfg.max_prompt_tokens,
            chat_template=cfg.chat_template,
            use_chat_template=cfg.use_chat_template,
            name=cfg.dataset_name,
            overwrite=cfg.overwrite,
            engine=engine,
        )
    return Path(str(result.source))


def _engine(cfg: Any) -> AbstractContextManager[Any]:
    """The Ray pool of ``cfg.engine`` (workers load ``cfg.model`` themselves), or ``None`` for this process."""
    if cfg.engine.kind != "ray":
        return nullcontext(None)
    from probes.collection.ray_engine import ModelSource, RayEngine
    from probes.models.packages import resolve_package

    m = cfg.model
    source = ModelSource(
        resolve_package(m.name_or_path), m.dtype, m.device, m.revision, m.layers_attr, m.device_map
    )
    return RayEngine(source, cfg.engine)


def validate_generate_config(path: Path, overrides: list[str]) -> list[str]:
    """``probes validate`` for a generate config: schema, the dataset, a turn to answer in every row; no model."""
    from probes.config.generate import load_generate_config
    from probes.generate.core import _check_prompts
    from probes.models.packages import resolve_package
    from probes.pipeline import load_spec

    cfg = load_generate_config(path, overrides)
    dataset = load_spec(cfg.data, seed=cfg.sampling.seed, what="data")
    _check_prompts(list(dataset), dataset.source)
    s = cfg.sampling
    return [
        f"generate {len(dataset)} prompts from {dataset.source} -> {cfg.output}"
        + (" (exists: set overwrite)" if Path(cfg.output).exists() and not cfg.overwrite else ""),
        f"model   {cfg.model.name_or_path}"
        + (f" → {resolve_package(cfg.model.name_or_path)}" if cfg.model.is_package else ""),
        f"sampling n={s.n} do_sample={s.do_sample} temperature={s.temperature} top_p={s.top_p} "
        f"max_new_tokens={s.max_new_tokens} seed={s.seed}",
    ]
