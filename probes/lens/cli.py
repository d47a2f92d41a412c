"""``probes lens MODEL --prompt TEXT``: registered on the main app by :func:`register` (imported only when invoked)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

HELP = (
    "Print the logit lens of a prompt (the top next token at every layer and position, and each layer's KL to "
    "the final layer) and write a layer x position heatmap (lens.png) and an HTML table (lens.html) to --out.\n\n"
    "One forward pass, stopped after the last block; the model's final norm and unembedding are applied to every "
    "layer's residual. --tuned reads a tuned lens saved with TunedLens.save (it must have been fitted on MODEL). "
    "Exit codes: 0 ok, 1 failed, 2 bad model, lens file or usage."
)


def register(app: typer.Typer) -> None:
    """Add the ``lens`` command to ``app``."""

    @app.command("lens", help=HELP)
    def lens_command(
        model: Annotated[
            str, typer.Argument(help="Model: a local folder, Hub id, .gguf file or package:<name>.")
        ],
        prompt: Annotated[str, typer.Option("--prompt", "-p", help="The text to read the lens of.")],
        out: Annotated[
            Path, typer.Option("--out", "-o", help="Folder for lens.png, lens.html, lens.json.")
        ] = Path("lens_out"),
        k: Annotated[int, typer.Option("--k", help="Top-k tokens kept per layer and position.")] = 5,
        tuned: Annotated[
            Path | None, typer.Option("--tuned", help="A tuned lens (.safetensors) fitted on MODEL.")
        ] = None,
        positions: Annotated[
            int, typer.Option("--positions", help="Positions shown in the table/plot.")
        ] = 16,
        device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, ...")] = "auto",
    ) -> None:
        import json

        from probes.cli_errors import exit_on_errors, fail

        with exit_on_errors():
            from probes.errors import FingerprintMismatchError, UnsupportedArchitectureError
            from probes.lens import TunedLens, lens_heatmap, lens_html, logit_lens
            from probes.models import load_model

            try:
                lm, tokenizer = load_model(model, device=device, progress=False)
                translators = TunedLens.load(tuned, lm) if tuned is not None else None
                result = logit_lens(lm, tokenizer, prompt, k=k, translators=translators)
            except (UnsupportedArchitectureError, FingerprintMismatchError) as exc:
                fail(2, str(exc))
            typer.echo(result.table(max_positions=positions))
            out.mkdir(parents=True, exist_ok=True)
            png = lens_heatmap(result, out / "lens.png", max_positions=positions)
            page = lens_html(result, out / "lens.html", title=f"{result.lens} lens of {model}")
            (out / "lens.json").write_text(json.dumps(result.as_dict()) + "\n")
            typer.echo(f"wrote {png}, {page} and {out / 'lens.json'}")
