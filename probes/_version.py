"""The package version, in one place: modules import it from here, never through ``import probes``."""

__version__ = "0.1.0"
