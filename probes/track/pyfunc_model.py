"""The MLflow model of a probe bundle, logged with MLflow's *models-from-code* (no pickle).

MLflow copies this file into the logged model and executes it at load time; ``set_model`` below names the
model object. ``load_context`` reads the bundle (safetensors + JSON) once; ``predict`` scores activations:

    model = mlflow.pyfunc.load_model("runs:/<run_id>/probe")   # or the models:/ URI the run printed
    model.predict(features)   # (n, d) ndarray or DataFrame of pooled activations at the probe's site
    model.predict([a, b])     # a token probe: one (tokens, d) array per text

and returns a DataFrame with ``score`` (decision function: higher = more of the positive class),
``probability`` (calibrated) and ``flagged`` (``score > threshold``, the threshold calibrated on the
control set for the run's first target FPR). ``model_config={"probe": name}`` picks a probe of a
multi-probe bundle (default: the first).
"""

from __future__ import annotations

import mlflow
from mlflow.pyfunc import PythonModel


class ProbeBundleModel(PythonModel):
    """Scores ``(n, d)`` activations with one probe of a :class:`probes.package.ProbeBundle`."""

    # The run logs an input example (hence a signature); MLflow's type-hint validation would only wrap
    # predict and warn that it has none.
    _skip_type_hint_validation = True

    def load_context(self, context):  # noqa: ANN001, ANN201
        from probes.package import ProbeBundle

        self.bundle = ProbeBundle.load(context.artifacts["bundle"])
        config = dict(getattr(context, "model_config", None) or {})
        self.entry = self.bundle[config.get("probe") or self.bundle.names[0]]
        threshold = self.entry.threshold_for()
        self.threshold = None if threshold is None else float(threshold.value)

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        import numpy as np
        import pandas as pd
        import torch

        if getattr(self.entry.probe, "token_level", False):
            return self._predict_tokens(model_input)
        if isinstance(model_input, pd.DataFrame):
            X = model_input.to_numpy(dtype=np.float32)
        elif isinstance(model_input, dict):  # named-tensor input: take the only tensor
            (X,) = (np.asarray(v, dtype=np.float32) for v in model_input.values())
        else:
            X = np.asarray(model_input, dtype=np.float32)
        if X.ndim == 1:
            X = X[None, :]
        with torch.inference_mode():
            scores = self.entry.score(torch.from_numpy(np.ascontiguousarray(X)))
        return self._frame(scores)

    def _predict_tokens(self, model_input):  # noqa: ANN001, ANN202
        """A token probe reads every token of a text: a list of ``(tokens, d)`` arrays, one per text (a
        DataFrame's first column of them, or one ``(tokens, d)`` array for a single text)."""
        import numpy as np
        import pandas as pd
        import torch

        from probes.collection import RaggedTokens

        if isinstance(model_input, pd.DataFrame):
            model_input = list(model_input.iloc[:, 0])
        elif isinstance(model_input, np.ndarray) and model_input.dtype != object and model_input.ndim == 2:
            model_input = [model_input]
        pieces = [
            torch.as_tensor(np.asarray(np.stack(list(x)) if np.ndim(x) == 1 else x, dtype=np.float32))
            for x in model_input
        ]
        if not pieces or any(p.ndim != 2 or len(p) == 0 for p in pieces):
            raise ValueError(
                "A token probe takes a list of (tokens, d) arrays, one per text, each non-empty."
            )
        lengths = torch.tensor([len(p) for p in pieces], dtype=torch.long)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(lengths, 0)])
        values = torch.cat(pieces)
        norm = self.entry.normalization
        if norm is not None:
            values = (values - norm["mean"].float().reshape(-1)) / norm["scale"].float().reshape(-1)
        ragged = RaggedTokens(values, offsets)
        with torch.inference_mode():
            scores = self.entry.probe.score_torch(ragged)
        return self._frame(scores)

    def _frame(self, scores):  # noqa: ANN001, ANN202
        import numpy as np
        import pandas as pd

        probability = self.entry.calibrate(scores)
        scores_np = scores.float().cpu().numpy().astype(np.float64)
        out = pd.DataFrame(
            {"score": scores_np, "probability": probability.float().cpu().numpy().astype(np.float64)}
        )
        if self.threshold is not None:
            out["flagged"] = scores_np > self.threshold
        return out


mlflow.models.set_model(ProbeBundleModel())
