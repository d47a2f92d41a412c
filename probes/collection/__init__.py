"""Activation collection: exact, early-stopping, length-sorted, with a resumable disk cache.

The public function is ``probes.collect``; this subpackage is named ``collection`` so that importing it never
shadows that function on the ``probes`` package.
"""

from probes.collection.activations import Activations, Features, RaggedTokens
from probes.collection.collect import collect, collect_encoded

__all__ = ["Activations", "Features", "RaggedTokens", "collect", "collect_encoded"]
