"""Lenses: read what the model would predict after each layer.

- :func:`logit_lens` -> :class:`LensResult`: the model's final norm and unembedding applied to every residual
  site in one early-stopped pass; top-k tokens, probabilities and the KL to the final layer per position.
- :class:`TunedLens`: one affine translator per layer fitted to the final distribution (KL), saved with the
  model fingerprint.
- :func:`lens_heatmap` (layer x position PNG) and :func:`lens_html` (a table of the top token per layer).
"""

from probes.lens.logit import LensResult, lm_head_of, logit_lens, residuals, unembed
from probes.lens.plots import lens_heatmap, lens_html
from probes.lens.tuned import TunedLens, kl_per_layer

__all__ = [
    "LensResult",
    "TunedLens",
    "kl_per_layer",
    "lens_heatmap",
    "lens_html",
    "lm_head_of",
    "logit_lens",
    "residuals",
    "unembed",
]
