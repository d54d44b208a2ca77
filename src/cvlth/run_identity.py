"""A run's identity and the canonical hash that names it.

:func:`config_hash` turns a validated config into a short hex string over canonical JSON (sorted
keys, defaults included, floats normalised) of what the config *is* (:func:`identity`: each model's
``normalize_identity`` hook drops what does not change the run). The run store files a run under
``<store>/<kind>/<hash>/``, so anything here that changes a hash changes which runs are reused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Any

from pydantic import BaseModel

from cvlth.errors import ConfigError

HASH_LENGTH = 16


#: Part of every hash: bumped when what a config means changes (2: independent seeds per run, θ_5%
#: from θ_0, exact complement, identity normalisation), so older stores are not silently reused.
IDENTITY_VERSION = 2


def canonical_json(cfg: BaseModel) -> str:
    """Sorted keys, defaults included, every float written as ``repr(float(x))``, over the config's
    *identity* (see :func:`identity`)."""
    return json.dumps(_canonical(identity(cfg)), sort_keys=True, separators=(",", ":"))


def config_hash(cfg: BaseModel) -> str:
    """First 16 hex digits of sha256 over :func:`canonical_json`: stable across runs and machines."""
    text = f"cvlth-identity/{IDENTITY_VERSION}\n{canonical_json(cfg)}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:HASH_LENGTH]


def identity(value: Any) -> Any:
    """What a config *is*, as plain data: its fields, recursively, after each model's
    ``normalize_identity(data)`` hook (if it has one) removed what does not change the run — an
    option at its default value, a field the run does not use, a file's path instead of its content."""
    if isinstance(value, BaseModel):
        data = {name: identity(getattr(value, name)) for name in type(value).model_fields}
        normalize = getattr(value, "normalize_identity", None)
        return normalize(data) if normalize is not None else data
    if isinstance(value, dict):
        return {key: identity(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [identity(item) for item in value]
    return value


def without_defaults(options: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``options`` minus the entries equal to their default (``[0.3, 1.0]`` equals ``(0.3, 1.0)``)."""
    return {
        key: value
        for key, value in options.items()
        if key not in defaults or _canonical(identity(value)) != _canonical(identity(defaults[key]))
    }


def _canonical(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return f"float:{value!r}"
        # A tagged string keeps 0.1 / 1e-1 / 0.10 equal and 1 (int) distinct from 1.0 in free dicts.
        return f"float:{float(value)!r}"
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise ConfigError(f"config value {value!r} of type {type(value).__name__} cannot be hashed")
