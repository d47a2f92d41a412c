"""Every exception the library raises on purpose, in one place.

Messages say what went wrong *and* what to do about it; data errors name the file and line or field.
"""

from __future__ import annotations


class ProbesError(Exception):
    """Base class of every error raised on purpose by ``probes``."""


class DatasetError(ProbesError, ValueError):
    """A contrast dataset is malformed: the message names the file, the line or row, and the field."""


class ConfigError(ProbesError, ValueError):
    """A run config is invalid: the message names the file and the key."""


class NotFittedError(ProbesError, AttributeError):
    """A probe was used before ``fit`` (mirrors ``sklearn.exceptions.NotFittedError``)."""


class SiteError(ProbesError, ValueError):
    """A site name (``layers.N``) cannot be resolved for this model."""


class UnsupportedArchitectureError(SiteError):
    """The model's block list cannot be found; pass ``layers_attr=`` to name it."""


class FingerprintMismatchError(ProbesError):
    """A probe or cache was made on a different model than the one given."""


class BundleError(ProbesError, ValueError):
    """A probe bundle on disk is missing, corrupted, tampered with, or of an unknown schema."""


class CacheError(ProbesError):
    """An activation cache on disk is inconsistent with its manifest."""


class CollectionError(ProbesError, RuntimeError):
    """A forward pass produced activations that cannot be stored (NaN or infinite values): the message names
    the dataset row ids and the site, so the rows (or the model's dtype) can be fixed."""


class EngineError(ProbesError):
    """The Ray engine cannot run: Ray missing, a cluster unreachable or too small, or a worker failed."""


class TrackingError(ProbesError):
    """MLflow tracking failed and the run was configured to fail rather than continue untracked."""


class TokenizerError(ProbesError, TypeError):
    """A tokenizer cannot do what was asked (a slow tokenizer has no offsets; no chat template to apply)."""


class MonitorError(ProbesError, RuntimeError):
    """A streaming monitor could not score a forward pass it was attached to, so it refuses to go on.

    Raised (fail closed) when the positions of a forward call cannot be worked out from what the caller
    passed, when a probe's site produced no activations, when the decoding mode reorders rows (beam search,
    assisted decoding), or - at the end of a generation - when a score was NaN or infinite.
    """


class CalibrationWarning(UserWarning):
    """A threshold could not be calibrated as asked (e.g. too few benign calibration scores for the target
    false-alarm rate, so the threshold is ``+inf`` and nothing is ever flagged)."""


class ModelFileError(ProbesError, ValueError):
    """A model file cannot be used: missing, truncated, not what it claims, or of an architecture or
    quantisation this installation cannot load (the message names the file and what is supported)."""


class ModelLoadError(ProbesError, OSError):
    """A model cannot be loaded from where it was asked for (e.g. a Hub id while the Hub is unreachable);
    the message names the offline alternatives (a local folder, ``HF_HUB_OFFLINE=1``)."""
