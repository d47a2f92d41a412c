"""The site grammar, in one place and without torch: ``layers.N`` (negative N counts from the end) and
``final_norm``, parsed into a :class:`Site` value (see :mod:`probes.models.sites` for what they mean on a
model). Configs check names with :func:`is_site_name` before any model is loaded; everything after resolves
them with :func:`parse_site` and passes the ``Site`` on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from probes.errors import SiteError

_SITE_RE = re.compile(r"^layers\.(-?\d+)$")
_INDEX_RE = re.compile(r"^-?\d+$")
FINAL_NORM = "final_norm"


def is_site_name(name: str | int) -> bool:
    """True for a well-formed site: ``layers.N``, ``final_norm`` or a bare (possibly negative) index."""
    if isinstance(name, bool):
        return False
    if isinstance(name, int):
        return True
    return name == FINAL_NORM or bool(_SITE_RE.match(name) or _INDEX_RE.match(name))


@dataclass(frozen=True)
class Site:
    """A resolved site: ``index`` is the residual index ``0..L``; ``final_norm`` sites have index ``L + 1``."""

    name: str
    index: int
    is_final_norm: bool = False


def parse_site(name: str | int, n_layers: int) -> Site:
    """Resolve ``"layers.N"`` (negative N allowed), a bare int, or ``"final_norm"`` to a canonical Site."""
    if isinstance(name, int) or _INDEX_RE.match(str(name)):
        name = f"layers.{int(name)}"
    if name == FINAL_NORM:
        return Site(FINAL_NORM, n_layers + 1, True)
    match = _SITE_RE.match(str(name))
    if match is None:
        raise SiteError(
            f"Unknown site {name!r}. Use 'layers.N' (residual stream after block N; 'layers.0' is the "
            f"embedding output; negative N counts from the end) or '{FINAL_NORM}'."
        )
    n = int(match.group(1))
    if n < 0:
        n = n_layers + 1 + n
    if not 0 <= n <= n_layers:
        raise SiteError(f"Site {name!r} is out of range: this model has layers.0 .. layers.{n_layers}.")
    return Site(f"layers.{n}", n)


def parse_sites(names: list[str | int] | str, n_layers: int) -> list[Site]:
    """Resolve a list of sites, or ``"all"`` (every residual site ``layers.0..layers.L``), deduplicated."""
    if names == "all":
        names = list(range(n_layers + 1))
    if isinstance(names, (str, int)):
        names = [names]
    seen: dict[str, Site] = {}
    for name in names:
        site = parse_site(name, n_layers)
        seen.setdefault(site.name, site)
    return list(seen.values())
