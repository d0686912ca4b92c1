"""Dataclass configs and the preset registries (DiT/timm style: name -> config factory).

Tokenizer presets: "vfmtok-l" (the paper's configuration), "tiny" (tests, demo).
GPT presets: "GPT-B", "GPT-L", "GPT-XL", "GPT-XXL", "GPT-2B", "GPT-3B" (official LlamaGen shapes), "GPT-tiny".

Configs serialise to JSON (`to_dict` / `from_dict`) next to every artifact; no argparse objects.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, TypeVar

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


def _lookup(registry: dict[str, Callable[[], T]], name: str, kind: str) -> T:
    if name not in registry:
        raise KeyError(f"unknown {kind} preset {name!r}; available: {', '.join(sorted(registry))}")
    return registry[name]()


# ---------------------------------------------------------------------------------------------
# Tokenizer configs (owned by vfmtok/models/tokenizer.py; registered here)
# ---------------------------------------------------------------------------------------------
TOKENIZER_PRESETS: dict[str, Callable[[], Any]] = {}


def tokenizer_preset(name: str) -> Any:
    """The `TokenizerConfig` of preset `name` (raises KeyError listing the presets)."""
    import vfmtok.models.tokenizer  # noqa: F401  (registers presets)

    return _lookup(TOKENIZER_PRESETS, name, "tokenizer")


# ---------------------------------------------------------------------------------------------
# GPT configs (owned by vfmtok/models/gpt.py; registered here)
# ---------------------------------------------------------------------------------------------
GPT_PRESETS: dict[str, Callable[[], Any]] = {}


def gpt_preset(name: str) -> Any:
    """The `GPTConfig` of preset `name` (raises KeyError listing the presets)."""
    import vfmtok.models.gpt  # noqa: F401  (registers presets)

    return _lookup(GPT_PRESETS, name, "GPT")
