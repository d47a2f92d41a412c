"""See the package docstring of probes."""
