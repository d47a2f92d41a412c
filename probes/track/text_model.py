"""A text-in MLflow model of a probe bundle: ``predict(["some text", ...])`` -> scores, so
``mlflow models serve`` can run a monitor on raw text. Logged with MLflow's *models-from-code* (no pickle).

``load_context`` loads the language model once (a Hub id, a local folder, a ``.gguf`` file or
``package:<name>``: ``model_config["model"]``, default the model the bundle was trained on) and the bundle
(safetensors + JSON), checks the model against the bundle's fingerprint, and ``predict`` collects activations at
the probe's site with the probe's pooling and scores them::

    model = mlflow.pyfunc.load_model(uri)   # log it with probes.track.log_text_model(bundle_dir)
    model.predict(["The capital of France is Paris."])   # DataFrame: score, probability, flagged

Input: a list of strings, or a DataFrame whose ``text`` column (else first column) holds them.
"""

from __future__ import annotations

import mlflow
from mlflow.pyfunc import PythonModel


class ProbeTextModel(PythonModel):
    """Scores raw texts: the model's activations at the bundle probe's site, scored by that probe."""

    _skip_type_hint_validation = True

    def load_context(self, context):  # noqa: ANN001, ANN201
        from probes.models import load_model
        from probes.package import ProbeBundle

        config = dict(getattr(context, "model_config", None) or {})
        self.bundle = ProbeBundle.load(context.artifacts["bundle"])
        self.entry = self.bundle[config.get("probe") or self.bundle.names[0]]
        meta = self.bundle.metadata
        ref = config.get("model") or meta.get("model_name_or_path")
        if not ref:
            raise ValueError(
                "model_config['model'] must name the language model (the bundle does not record one)."
            )
        self.model, self.tokenizer = load_model(
            ref,
            revision=config.get("revision"),
            dtype=config.get("dtype", "auto"),
            device=config.get("device", "cpu"),
        )
        self.layers_attr = config.get("layers_attr")
        self.bundle.check_model(self.model, self.layers_attr)
        self.max_length = int(config.get("max_length") or meta.get("max_length") or 512)
        self.chat_template = config.get("chat_template")
        threshold = self.entry.threshold_for()
        self.threshold = None if threshold is None else float(threshold.value)

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        import numpy as np
        import pandas as pd
        import torch

        from probes.collection import collect
        from probes.data import ContrastDataset, DatasetCard, Example

        if isinstance(model_input, pd.DataFrame):
            column = "text" if "text" in model_input.columns else model_input.columns[0]
            texts = [str(t) for t in model_input[column]]
        elif isinstance(model_input, str):
            texts = [model_input]
        else:
            texts = [str(t) for t in model_input]
        card = DatasetCard(name="served", label_names=("negative", "positive"), kind="control")
        ds = ContrastDataset([Example(id=str(i), label=0, text=t) for i, t in enumerate(texts)], card)
        site = self.entry.site
        acts = collect(
            self.model,
            self.tokenizer,
            ds,
            [site],
            pooling=self.entry.pooling or "mean",
            max_length=self.max_length,
            chat_template=self.chat_template,
            progress=False,
            layers_attr=self.layers_attr,
        )
        X = acts[site]
        with torch.inference_mode():
            scores = self.entry.probe.score_torch(X) if hasattr(X, "offsets") else self.entry.score(X)
            probability = self.entry.calibrate(scores)
        scores_np = scores.float().cpu().numpy().astype(np.float64)
        out = pd.DataFrame(
            {"score": scores_np, "probability": probability.float().cpu().numpy().astype(np.float64)}
        )
        if self.threshold is not None:
            out["flagged"] = scores_np > self.threshold
        return out


mlflow.models.set_model(ProbeTextModel())
