"""vfmtok: frozen vision foundation models as discrete image tokenizers, and AR generators on their tokens.

Re-implements "Vision Foundation Models as Effective Visual Tokenizers for Autoregressive Image
Generation" (VFMTok, arXiv 2507.08441). The public Python API (stable names) is documented in
docs/api.md; importing this package is cheap: heavy submodules load on first use.
"""
from __future__ import annotations

__version__ = "0.1.0.dev0"

_LAZY = {
    # name -> (module, attribute); filled in as the components land.
    "create_tokenizer": ("vfmtok.models.tokenizer_io", "create_tokenizer"),
    "load_tokenizer": ("vfmtok.models.tokenizer_io", "load_tokenizer"),
    "create_gpt": ("vfmtok.models.gpt_io", "create_gpt"),
    "load_gpt": ("vfmtok.models.gpt_io", "load_gpt"),
    "create_rar": ("vfmtok.models.rar_io", "create_rar"),
    "load_rar": ("vfmtok.models.rar_io", "load_rar"),
    "generate": ("vfmtok.sampling", "generate"),
    "save_pretrained": ("vfmtok.models.pretrained", "save_pretrained"),
    "from_pretrained": ("vfmtok.models.pretrained", "from_pretrained"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'vfmtok' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
