"""``probes monitor``: stream a generation to the terminal, tokens coloured by probe score, stop when it fires.

Only typer/rich are imported at module level; torch and transformers load inside the command, so
``probes --help`` stays instant.
"""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from probes.errors import BundleError, ConfigError, DatasetError, ProbesError

#: Exit codes of ``probes monitor`` (also listed in its --help).
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_FIRED = 0, 1, 2, 3

HELP = (
    "Generate from PROMPT with the probes of BUNDLE watching every token; stop when one fires.\n\n"
    "Tokens are shaded by their smoothed score (blue below the threshold, red above) and a marker shows where "
    f"the monitor interrupted. Exit codes: {EXIT_OK} = finished without firing, {EXIT_ERROR} = error (model "
    f"mismatch, invalid settings), {EXIT_USAGE} = bad command line or a missing, corrupted, edited or unsigned "
    f"bundle, {EXIT_FIRED} = the monitor fired and stopped generation (or flagged the prompt with "
    "--score-prompt)."
)


class SmoothingChoice(str, Enum):
    ema = "ema"
    rolling = "rolling"
    none = "none"


def register(app: typer.Typer) -> None:
    """Add the ``monitor`` and ``calibrate`` commands to ``app``."""
    register_calibrate(app)

    @app.command("monitor", help=HELP)
    def monitor_command(
        bundle: Annotated[Path, typer.Argument(help="Bundle folder written by ProbeBundle.save.")],
        model: Annotated[str, typer.Option("--model", help="Hub id or local folder of the model.")],
        prompt: Annotated[str, typer.Option("--prompt", help="Text to continue.")],
        chat: Annotated[
            bool, typer.Option("--chat", help="Wrap the prompt as a user message (chat template).")
        ] = False,
        max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1)] = 64,
        threshold: Annotated[
            float | None, typer.Option("--threshold", help="Override the bundle's threshold(s).")
        ] = None,
        target_fpr: Annotated[
            float | None,
            typer.Option("--target-fpr", help="Use the bundle threshold calibrated for this FPR."),
        ] = None,
        smoothing: Annotated[SmoothingChoice, typer.Option("--smoothing")] = SmoothingChoice.ema,
        alpha: Annotated[float, typer.Option("--alpha", help="EMA weight of the newest token.")] = 0.3,
        window: Annotated[int, typer.Option("--window", help="Rolling-mean window (tokens).")] = 8,
        patience: Annotated[
            int, typer.Option("--patience", help="Tokens above threshold before firing.")
        ] = 1,
        score_prompt: Annotated[bool, typer.Option("--score-prompt", help="Also screen the prompt.")] = False,
        sample: Annotated[
            bool, typer.Option("--sample/--greedy", help="Sample instead of greedy decoding.")
        ] = False,
        temperature: Annotated[float, typer.Option("--temperature")] = 1.0,
        seed: Annotated[int, typer.Option("--seed")] = 0,
        html: Annotated[
            Path | None, typer.Option("--html", help="Write the per-token trace as HTML.")
        ] = None,
        no_check_fingerprint: Annotated[
            bool,
            typer.Option("--no-check-fingerprint", help="Attach even if the model's fingerprint differs."),
        ] = False,
        device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, mps, ...")] = "auto",
    ) -> None:
        from rich.console import Console

        console = Console(highlight=False, soft_wrap=True)
        err = Console(stderr=True, highlight=False)
        try:
            code = _run(
                console,
                bundle=bundle,
                model_name=model,
                prompt=prompt,
                chat=chat,
                max_new_tokens=max_new_tokens,
                threshold=threshold,
                target_fpr=target_fpr,
                smoothing=smoothing.value,
                alpha=alpha,
                window=window,
                patience=patience,
                score_prompt=score_prompt,
                sample=sample,
                temperature=temperature,
                seed=seed,
                html=html,
                check_fingerprint=not no_check_fingerprint,
                device=device,
            )
        except BundleError as exc:
            # Bad input, as in every probes command: a bundle that is missing, corrupted, edited or unsigned
            # must never look like "the monitor did not fire" (0) or an ordinary failure (1).
            from rich.markup import escape

            err.print(f"[bold red]error:[/] {escape(str(exc))}")
            raise typer.Exit(EXIT_USAGE) from exc
        except (ProbesError, ValueError, OSError) as exc:
            # Expected failures (model mismatch, invalid settings): one line, no traceback.
            err.print(f"[bold red]error:[/] {exc}", markup=True)
            raise typer.Exit(EXIT_ERROR) from exc
        raise typer.Exit(code)


CALIBRATE_HELP = (
    "Calibrate BUNDLE's monitor on the model's own benign generations: sample continuations of the benign "
    "PROMPTS with the monitor attached, take each generation's maximum smoothed score, and store a conformal "
    "threshold for each target interrupt rate in the bundle (kind: generation; the monitor prefers it). "
    "Prints the interrupt rate on held-out generations with its exact 95% interval, beside the rate the "
    "bundle's text-level threshold would give.\n\n"
    f"Exit codes: {EXIT_OK} = ok, {EXIT_ERROR} = error, {EXIT_USAGE} = bad bundle, data or command line."
)


def register_calibrate(app: typer.Typer) -> None:
    @app.command("calibrate", help=CALIBRATE_HELP)
    def calibrate_command(
        bundle: Annotated[Path, typer.Argument(help="Bundle folder (updated in place unless --out).")],
        model: Annotated[str, typer.Option("--model", help="Hub id or local folder of the model.")],
        prompts: Annotated[
            str,
            typer.Option(
                "--prompts", help="Benign control dataset (folder or file) whose rows are the prompts."
            ),
        ],
        where: Annotated[
            list[str] | None,
            typer.Option(
                "--where", help="Keep rows whose condition KEY equals VALUE (KEY=VALUE, repeatable)."
            ),
        ] = None,
        n: Annotated[int, typer.Option("--n", min=2, help="Benign generations to sample.")] = 500,
        target_rate: Annotated[
            list[float] | None,
            typer.Option("--target-rate", help="Target interrupt rate (repeatable); default 0.01."),
        ] = None,
        holdout: Annotated[float, typer.Option("--holdout", help="Share of prompt groups held out.")] = 0.5,
        max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1)] = 64,
        batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 8,
        sample: Annotated[
            bool, typer.Option("--sample/--greedy", help="Sample (default) or decode greedily.")
        ] = True,
        temperature: Annotated[float, typer.Option("--temperature")] = 1.0,
        top_p: Annotated[float, typer.Option("--top-p")] = 1.0,
        seed: Annotated[int, typer.Option("--seed")] = 0,
        chat: Annotated[
            bool | None,
            typer.Option(
                "--chat/--no-chat", help="Render prompts with the chat template (default: chat rows do)."
            ),
        ] = None,
        smoothing: Annotated[SmoothingChoice, typer.Option("--smoothing")] = SmoothingChoice.ema,
        alpha: Annotated[float, typer.Option("--alpha")] = 0.3,
        window: Annotated[int, typer.Option("--window")] = 8,
        patience: Annotated[int, typer.Option("--patience", min=1)] = 1,
        out: Annotated[
            Path | None, typer.Option("--out", help="Write the calibrated bundle here instead.")
        ] = None,
        report: Annotated[
            Path | None,
            typer.Option(
                "--report", help="Folder for report.json and the histogram (default: BUNDLE.calibration)."
            ),
        ] = None,
        device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, mps, ...")] = "auto",
    ) -> None:
        from rich.console import Console

        console = Console(highlight=False)
        err = Console(stderr=True, highlight=False)
        try:
            _calibrate(
                console,
                bundle=bundle,
                model_name=model,
                prompts=prompts,
                where=where or [],
                n=n,
                target_rates=target_rate or [0.01],
                holdout=holdout,
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
                sample=sample,
                temperature=temperature,
                top_p=top_p,
                seed=seed,
                chat=chat,
                smoothing=smoothing.value,
                alpha=alpha,
                window=window,
                patience=patience,
                out=out,
                report=report,
                device=device,
            )
        except (BundleError, DatasetError, ConfigError) as exc:
            err.print(f"[bold red]error:[/] {exc}", markup=True)
            raise typer.Exit(EXIT_USAGE) from exc
        except (ProbesError, ValueError, OSError) as exc:
            err.print(f"[bold red]error:[/] {exc}", markup=True)
            raise typer.Exit(EXIT_ERROR) from exc


def _calibrate(
    console,
    *,
    bundle: Path,
    model_name: str,
    prompts: str,
    where: list[str],
    out: Path | None,
    report: Path | None,
    device: str,
    target_rates: list[float],
    **kwargs,
) -> None:
    import json

    from rich.table import Table

    from probes.data import load_dataset
    from probes.models import load_model
    from probes.monitor.calibrate import calibrate_generation
    from probes.package import ProbeBundle

    conditions: dict[str, str] = {}
    for item in where:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--where takes KEY=VALUE, got {item!r}.")
        conditions[key] = value
    original = ProbeBundle.load(bundle)
    data = load_dataset(prompts)
    if conditions:
        data = data.filter(lambda ex: all(ex.conditions.get(k) == v for k, v in conditions.items()))
        if not len(data):
            raise DatasetError(f"{prompts}: no row has conditions {conditions}.")
    lm, tokenizer = load_model(model_name, device=device)
    sample = kwargs.pop("sample")
    name = f"{data.name}" + (
        f" ({', '.join(f'{k}={v}' for k, v in conditions.items())})" if conditions else ""
    )
    result = calibrate_generation(
        original,
        lm,
        tokenizer,
        data,
        target_rates=target_rates,
        do_sample=sample,
        prompts_name=name,
        **kwargs,
    )
    calibrated = result.apply(original)
    target = out or bundle
    calibrated.save(target)
    folder = report or bundle.with_name(bundle.name + ".calibration")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "report.json.tmp"
    tmp.write_text(json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8")
    tmp.replace(folder / "report.json")
    result.plot(folder / "generation_maxima.png")

    table = Table(
        title=f"Interrupt rate on {result.probes[0].n_holdout} held-out benign generations",
        title_justify="left",
    )
    for col in ("probe", "target", "threshold", "held-out rate [95% CI]", "text threshold", "its rate"):
        table.add_column(col, justify="left" if col == "probe" else "right")
    for p in result.probes:
        lo, hi = p.holdout_interval
        text_rate = "" if p.text_holdout_rate is None else f"{p.text_holdout_rate:.1%}"
        table.add_row(
            p.probe,
            f"{p.target_rate:.1%}",
            f"{p.threshold:.4g}",
            f"{p.holdout_rate:.1%} [{lo:.1%}, {hi:.1%}]",
            "" if p.text_threshold is None else f"{p.text_threshold:.4g}",
            text_rate,
        )
    console.print(table)
    sampling = result.record["sampling"]
    console.print(
        f"{result.record['prompts']['n_generations']} generations of {sampling['max_new_tokens']} tokens "
        f"({'sampled, T=' + str(sampling['temperature']) + ', top_p=' + str(sampling['top_p']) if sampling['do_sample'] else 'greedy'}, "
        f"seed {sampling['seed']}) from {result.record['prompts']['n_prompts']} prompts of {name}."
    )
    console.print(f"Bundle: {target} (generation-level thresholds added)")
    console.print(f"Report: {folder / 'report.json'}, {folder / 'generation_maxima.png'}")


def _run(
    console,
    *,
    bundle: Path,
    model_name: str,
    prompt: str,
    chat: bool,
    max_new_tokens: int,
    threshold: float | None,
    target_fpr: float | None,
    smoothing: str,
    alpha: float,
    window: int,
    patience: int,
    score_prompt: bool,
    sample: bool,
    temperature: float,
    seed: int,
    html: Path | None,
    check_fingerprint: bool,
    device: str,
) -> int:
    from rich.text import Text

    from probes.models import load_model
    from probes.monitor import Monitor
    from probes.package import ProbeBundle

    probe_bundle = ProbeBundle.load(bundle)
    monitor = Monitor(
        probe_bundle,
        smoothing=smoothing,  # type: ignore[arg-type]
        alpha=alpha,
        window=window,
        patience=patience,
        threshold=threshold,
        target_fpr=target_fpr,
        score_prompt=score_prompt,
        check_fingerprint=check_fingerprint,
    )
    lm, tokenizer = load_model(model_name, device=device)
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"{model_name} has no chat template; drop --chat and pass the raw prompt.")
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        input_ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    else:
        input_ids = tokenizer(prompt, return_tensors="pt")["input_ids"]

    names = monitor.probe_names
    console.print(
        Text.assemble(
            ("monitoring ", "dim"),
            (
                ", ".join(
                    f"{n} (threshold {t:.3g}, {kind})"
                    for n, t, kind in zip(names, monitor.thresholds, monitor.threshold_kinds, strict=True)
                ),
                "bold",
            ),
            (f"  smoothing={smoothing}\n", "dim"),
        )
    )
    console.print(Text(prompt if not chat else f"[user] {prompt}\n", style="dim"), end="")
    fired = None
    for event in monitor.stream(
        lm,
        tokenizer,
        input_ids=input_ids,
        max_new_tokens=max_new_tokens,
        do_sample=sample,
        temperature=temperature,
        seed=seed,
    ):
        j = max(range(len(names)), key=lambda i: event.smoothed[names[i]] - monitor.thresholds[i])
        console.print(Text(event.text, style=_style(event.smoothed[names[j]], monitor.thresholds[j])), end="")
        if event.fired:
            fired = (names[j], event.smoothed[names[j]], monitor.thresholds[j])
    prompt_flagged = fired is None and score_prompt and bool(monitor.fired.any())
    console.print()
    if fired is not None:
        name, value, thr = fired
        console.print(
            Text(
                f" \u26d4 monitor stopped generation: {name} smoothed score {value:.3f} > threshold {thr:.3f} ",
                style="bold white on red",
            )
        )
    elif prompt_flagged:
        console.print(
            Text(" \u26d4 monitor flagged the prompt; nothing generated ", style="bold white on red")
        )
    else:
        console.print(Text("(finished; the monitor did not fire)", style="dim"))
    if html is not None:
        monitor.trace.to_html(html, tokenizer=tokenizer)
        console.print(Text(f"trace written to {html}", style="dim"))
    return EXIT_FIRED if (fired is not None or prompt_flagged) else EXIT_OK


def _style(value: float, threshold: float) -> str:
    """Background shade: blue below the threshold, red above, stronger further away (one unit = full)."""
    center = threshold if math.isfinite(threshold) else 0.0
    a = min(1.0, abs(value - center) / 2.0)
    if value > center:
        g = int(255 - 190 * a)
        return f"black on rgb(255,{g},{g})"
    c = int(255 - 150 * a)
    return f"black on rgb({c},{c},255)"
