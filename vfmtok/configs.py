"""Dataclass configs <-> JSON dicts, for the configs serialised next to every artifact (no argparse objects).

The preset registries live beside their configs: `vfmtok.models.tokenizer_config.TOKENIZER_PRESETS`
("vfmtok-l", "tiny") and `vfmtok.models.gpt_config.GPT_PRESETS` ("GPT-B" ... "GPT-3B", "GPT-tiny").
"""
from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-serialisable dict of a (nested) dataclass config (tuples become lists)."""
    return dataclasses.asdict(config)


def config_from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build dataclass `cls` from `data`, refusing unknown keys with a clear error.

    Raises:
        ValueError: if `data` has keys that `cls` does not define (names them).
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown config key(s) {unknown}; expected a subset of {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        default = fields[name].default
        kwargs[name] = tuple(value) if isinstance(value, list) and isinstance(default, tuple) else value
    return cls(**kwargs)  # type: ignore[call-arg]


def preset_lookup(registry: dict[str, Any], name: str, kind: str) -> Any:
    """Call the factory `registry[name]` (DiT/timm-style name -> config factory).

    Raises:
        KeyError: `name` is not registered (lists the presets of this `kind`).
    """
    if name not in registry:
        raise KeyError(f"unknown {kind} preset {name!r}; available: {', '.join(sorted(registry))}")
    return registry[name]()
