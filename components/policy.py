"""What a visitor may ask this server to load: local folders only under allowed roots, hub models
only up to a size. Read from the environment, so a Space sets its own rules.

- $PRUNING_STUDIO_LOCAL_ROOTS: colon-separated folders under which local model folders are
  accepted (checked after resolving symlinks). Unset: none on a Space ($SPACE_ID set), anything
  elsewhere (one user on their own machine).
- $PRUNING_STUDIO_MAX_PARAMS: the largest hub model accepted, in billions of parameters.
"""

from __future__ import annotations

import os
from pathlib import Path

LOCAL_ROOTS_ENV = "PRUNING_STUDIO_LOCAL_ROOTS"
MAX_PARAMS_ENV = "PRUNING_STUDIO_MAX_PARAMS"


class SourceRefused(ValueError):
    """A model source this server does not accept; the message says why."""


def local_roots(env: dict | None = None) -> list[Path] | None:
    """Allowed roots (resolved), [] for none, None for anything."""
    env = os.environ if env is None else env
    text = env.get(LOCAL_ROOTS_ENV)
    if text is None:
        return [] if env.get("SPACE_ID") else None
    return [Path(p).expanduser().resolve() for p in text.split(":") if p.strip()]


def looks_local(source: str) -> bool:
    """A path rather than a hub id: starts like one, has more than one '/', or exists here."""
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or Path(source).expanduser().exists()


def check_source(source: str, env: dict | None = None) -> None:
    """Raise SourceRefused for a local folder outside the allowed roots."""
    if source == "default" or not looks_local(source):
        return
    roots = local_roots(env)
    if roots is None:
        return
    if not roots:
        raise SourceRefused(f"local folders cannot be loaded on this server ({LOCAL_ROOTS_ENV} is not set): "
                            "use the built-in default model or a hub id")
    resolved = Path(source).expanduser().resolve()
    if not any(resolved == root or root in resolved.parents for root in roots):
        raise SourceRefused(f"{source!r} (resolved: {resolved}) is outside the folders this server accepts "
                            f"({', '.join(str(r) for r in roots)}; {LOCAL_ROOTS_ENV})")


def max_params(env: dict | None = None) -> float | None:
    """The hub-model cap as a parameter count, or None."""
    env = os.environ if env is None else env
    text = env.get(MAX_PARAMS_ENV)
    if not text:
        return None
    try:
        return float(text) * 1e9
    except ValueError:
        raise SourceRefused(f"{MAX_PARAMS_ENV}={text!r} is not a number of billions") from None
