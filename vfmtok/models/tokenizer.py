"""VFMTok tokenizer: frozen VFM -> region-adaptive quantization -> ViT mask-token decoder -> CNN pixel decoder.

Paper: "Vision Foundation Models as Effective Visual Tokenizers for Autoregressive Image Generation"
(arXiv 2507.08441). Behaviour and parameter names follow the authors' `VQModel` (CVMI-Lab/VFMTok @ 828c780);
see shared/reference/vfmtok.md section 1 and docs/tokenizer.md.

    images (B,3,H,W) in [-1,1] ── FrozenVFM ──▶ L levels (B, N, C)            N = (S/14)^2 = 576, C = 1024
      ── encode_transformer (RegionEncoder) ──▶ slots (B, Q, D)               Q = 256, D = 512
      ── pre_slots_quant (D -> d) ── slot_quantize ──▶ codes (B, Q) int64      d = 12, K = 16384
      ── post_slots_quant (d -> D) ── decode_transformer (ViTDecoder) ──▶ (B, D, g, g)   g = S/16 = 21
      ── decoder (PixelDecoder) ──▶ recon (B, 3, S, S), unbounded               S = 336

The frozen VFM is NOT a registered submodule: it is kept in a plain attribute so that it never appears in
`state_dict()`, `parameters()` (optimizers, DDP) or saved weights, while `.to()/.cuda()/.half()` still move
it (`_apply` is overridden). Deep copies (e.g. an EMA model) share the same frozen encoder until one of them
is moved or cast, which then takes a private copy (so `copy.deepcopy(tok).to("cpu")` leaves `tok` alone).
"""
from __future__ import annotations

import copy
import json
import math
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from vfmtok.configs import TOKENIZER_PRESETS, config_from_dict, config_to_dict
from vfmtok.models.pixel_decoder import PixelDecoder, PixelDecoderConfig
from vfmtok.models.quantizer import VectorQuantizer
from vfmtok.models.region_encoder import RegionEncoder
from vfmtok.models.vfm import FrozenVFM
from vfmtok.models.vit_decoder import ViTDecoder, ViTDecoderConfig

WEIGHTS_FILE = "tokenizer.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "vfmtok-tokenizer"
FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------
@dataclass
class TokenizerConfig:
    """Everything that defines a tokenizer's shape (JSON-serialisable; defaults = the paper's `vfmtok-l`).

    Attributes:
        image_size: S, pixels of the square image the VFM sees and the decoder outputs (336).
        vfm_name: timm model name of the frozen encoder ("vit_large_patch14_reg4_dinov2.lvd142m").
        vfm_levels: 0-based block indices used as feature levels ((5, 11, 17, 23)); the last is final-normed.
        vfm_kwargs: extra timm constructor keywords (a small random ViT for `tiny`).
        vfm_pretrained: True: weights come from timm's pretrained source or `encoder_weights`; False: random
            init, reproducible from `vfm_seed` (used by `tiny`).
        vfm_seed: seed of the random encoder init when `vfm_pretrained` is False.
        dim: D, width of the region encoder and ViT decoder (512).
        num_queries: Q, tokens per image; must be a square (256 = 16 x 16).
        encoder_depth: deformable layers (6).
        encoder_heads: self-attention heads of the region encoder (8).
        deform_heads: deformable-attention heads (8).
        deform_points: sampling points per head and level (4).
        encoder_ffn_dim: FFN width of the region encoder (min(4 D, 1024) = 1024).
        codebook_size: K codes (16384).
        codebook_dim: d, code vector size (12).
        commit_weight: commitment loss weight (0.25).
        decoder_depth, decoder_heads, decoder_mlp_dim: ViT decoder blocks (6), heads (8), nominal FFN (2048 ->
            SwiGLU 1368).
        decoder_registers: decoder register tokens (4; they influence nothing).
        decoder_attn_dropout: attention dropout of the ViT decoder in training (0.1).
        semantic_dim: width of the predicted VFM features; 0 = the VFM width (1024 for DINOv2-L).
        pixel_ch, pixel_ch_mult, pixel_num_res_blocks: CNN pixel decoder (128, (1, 1, 2, 2, 4), 1); the
            decoder grid is g = S / 2**(len(pixel_ch_mult) - 1) (21 at 336 px).
    """

    image_size: int = 336
    vfm_name: str = "vit_large_patch14_reg4_dinov2.lvd142m"
    vfm_levels: tuple[int, ...] = (5, 11, 17, 23)
    vfm_kwargs: dict[str, Any] = field(default_factory=dict)
    vfm_pretrained: bool = True
    vfm_seed: int = 0
    dim: int = 512
    num_queries: int = 256
    encoder_depth: int = 6
    encoder_heads: int = 8
    deform_heads: int = 8
    deform_points: int = 4
    encoder_ffn_dim: int = 1024
    codebook_size: int = 16384
    codebook_dim: int = 12
    commit_weight: float = 0.25
    decoder_depth: int = 6
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    decoder_registers: int = 4
    decoder_attn_dropout: float = 0.1
    semantic_dim: int = 0
    pixel_ch: int = 128
    pixel_ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    pixel_num_res_blocks: int = 1

    def __post_init__(self) -> None:
        self.vfm_levels = tuple(self.vfm_levels)
        self.pixel_ch_mult = tuple(self.pixel_ch_mult)
        side = math.isqrt(self.num_queries)
        if side * side != self.num_queries:
            raise ValueError(f"TokenizerConfig: num_queries={self.num_queries} must be a perfect square")
        up = 2 ** (len(self.pixel_ch_mult) - 1)
        if self.image_size % up:
            raise ValueError(f"TokenizerConfig: image_size={self.image_size} must be divisible by the pixel decoder's "
                             f"upsampling factor {up} (2**(len(pixel_ch_mult)-1))")
        for name in ("dim", "encoder_depth", "codebook_size", "codebook_dim", "image_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"TokenizerConfig: {name} must be positive, got {getattr(self, name)}")

    @property
    def num_tokens(self) -> int:
        """Tokens per image L (= num_queries)."""
        return self.num_queries

    @property
    def token_grid(self) -> int:
        """Side of the token (query) grid (16)."""
        return math.isqrt(self.num_queries)

    @property
    def decoder_grid(self) -> int:
        """Side g of the pixel decoder's input grid (S / 16 = 21)."""
        return self.image_size // 2 ** (len(self.pixel_ch_mult) - 1)


def _vfmtok_l() -> TokenizerConfig:
    return TokenizerConfig()


def _tiny() -> TokenizerConfig:
    return TokenizerConfig(
        image_size=112,
        vfm_name="vit_small_patch14_reg4_dinov2",
        vfm_levels=(0, 1, 2, 3),
        vfm_kwargs={"embed_dim": 64, "depth": 4, "num_heads": 2},
        vfm_pretrained=False,
        dim=64, num_queries=64, encoder_depth=2, encoder_heads=4, deform_heads=4, deform_points=4,
        encoder_ffn_dim=128, codebook_size=1024, codebook_dim=8,
        decoder_depth=2, decoder_heads=4, decoder_mlp_dim=128, decoder_attn_dropout=0.0,
        pixel_ch=32, pixel_ch_mult=(1, 1, 2, 2, 2), pixel_num_res_blocks=0,
    )


TOKENIZER_PRESETS.setdefault("vfmtok-l", _vfmtok_l)
TOKENIZER_PRESETS.setdefault("tiny", _tiny)


# ---------------------------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------------------------
@dataclass
class TokenizerOutput:
    """Training forward result (see `VFMTokenizer.forward`).

    Attributes:
        recon: (B, 3, S, S) float reconstruction, unbounded (nominally [-1, 1]).
        codes: (B, L) int64 code indices, raster order of the query grid.
        vq_codebook_loss: scalar, mean((zq - sg(z))^2) (weight 1 applied).
        vq_commit_loss: scalar, 0.25 * mean((sg(zq) - z)^2) (weight applied).
        semantic_pred: (B, P, C) predicted VFM last-level features, or None.
        semantic_target: (B, P, C) frozen VFM final-normed last level (no grad), or None.
    """

    recon: torch.Tensor
    codes: torch.Tensor
    vq_codebook_loss: torch.Tensor
    vq_commit_loss: torch.Tensor
    semantic_pred: torch.Tensor | None = None
    semantic_target: torch.Tensor | None = None


_HOLDERS: "weakref.WeakKeyDictionary[nn.Module, weakref.WeakSet]" = weakref.WeakKeyDictionary()


class _SharedFrozen:
    """Holds the frozen encoder outside the module tree.

    Deep copies of a tokenizer (e.g. an EMA model) share the encoder (it never changes) until one of them is
    moved or cast to something else: that one then gets its own copy first (copy on move), so moving a copy
    never moves the encoder of the original.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        _HOLDERS.setdefault(module, weakref.WeakSet()).add(self)

    def is_shared(self) -> bool:
        return len(_HOLDERS.get(self.module, ())) > 1

    def unshare(self) -> None:
        """Replace the shared encoder by a private deep copy."""
        _HOLDERS[self.module].discard(self)
        self.module = copy.deepcopy(self.module)
        _HOLDERS.setdefault(self.module, weakref.WeakSet()).add(self)

    def __deepcopy__(self, memo: dict) -> "_SharedFrozen":
        return _SharedFrozen(self.module)

    def __getstate__(self) -> dict:
        return {"module": self.module}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["module"])


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------
class VFMTokenizer(nn.Module):
    """The VFMTok image tokenizer.

    Args:
        config: a `TokenizerConfig`.
        encoder_weights: where the frozen encoder's weights come from: None = the config's default
            (timm pretrained source when `vfm_pretrained`, else the seeded random init), "random", a file
            (timm state dict or the official `dinov2_vitl14_reg4_pretrain.pth` layout) or such a state dict.

    Raises:
        RuntimeError / FileNotFoundError / ValueError: encoder weights unavailable or not fitting (the message
            names the file and where to put it).
    """

    def __init__(self, config: TokenizerConfig, encoder_weights: str | Path | dict | None = None) -> None:
        super().__init__()
        self._config = config
        if encoder_weights is None:
            encoder_weights = "pretrained" if config.vfm_pretrained else "random"
        self.encoder_source = "<state dict>" if isinstance(encoder_weights, dict) else str(encoder_weights)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.vfm_seed)
            vfm = FrozenVFM(config.vfm_name, config.image_size, config.vfm_levels, norm_last=True,
                            weights=encoder_weights, timm_kwargs=config.vfm_kwargs)
        if config.image_size % vfm.patch_size:
            raise ValueError(f"image_size {config.image_size} is not a multiple of the encoder patch {vfm.patch_size}")
        object.__setattr__(self, "_frozen", _SharedFrozen(vfm))
        c = config
        self.encode_transformer = RegionEncoder(
            in_dim=vfm.embed_dim, dim=c.dim, levels=len(c.vfm_levels), num_queries=c.num_queries,
            depth=c.encoder_depth, heads=c.encoder_heads, deform_heads=c.deform_heads, points=c.deform_points,
            ffn_dim=c.encoder_ffn_dim)
        self.pre_slots_quant = nn.Linear(c.dim, c.codebook_dim)
        self.slot_quantize = VectorQuantizer(c.codebook_size, c.codebook_dim, c.commit_weight)
        self.post_slots_quant = nn.Linear(c.codebook_dim, c.dim)
        self.decode_transformer = ViTDecoder(ViTDecoderConfig(
            dim=c.dim, depth=c.decoder_depth, num_heads=c.decoder_heads, mlp_dim=c.decoder_mlp_dim,
            num_slots=c.num_queries, enc_grid=vfm.grid_size, dec_grid=c.decoder_grid,
            num_registers=c.decoder_registers, semantic_dim=c.semantic_dim or vfm.embed_dim,
            attn_dropout=c.decoder_attn_dropout))
        self.decoder = PixelDecoder(PixelDecoderConfig(
            z_channels=c.dim, ch=c.pixel_ch, ch_mult=c.pixel_ch_mult, num_res_blocks=c.pixel_num_res_blocks))

    # -- frozen encoder plumbing --------------------------------------------------------------
    @property
    def config(self) -> TokenizerConfig:
        """The `TokenizerConfig` (image_size, codebook_size, num_tokens, ...)."""
        return self._config

    @property
    def vfm(self) -> FrozenVFM:
        """The frozen encoder (not part of state_dict/parameters)."""
        return self._frozen.module

    def _apply(self, fn, recurse: bool = True):  # .to(), .cuda(), .half(), .to_empty() also move the VFM
        super()._apply(fn, recurse)
        holder = self._frozen
        if holder.is_shared():
            probe = next(holder.module.parameters(), None)
            if probe is not None and fn(probe) is not probe:  # a real move/cast: do not drag the other copies
                holder.unshare()
        holder.module._apply(fn, recurse)
        return self

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters that require grad (the frozen encoder is excluded by construction)."""
        return (p for p in self.parameters() if p.requires_grad)

    def vfm_features(self, images: torch.Tensor, return_input: bool = False):
        """Frozen multi-level features, computed without grad (see `FrozenVFM.forward`).

        Args:
            images: (B, 3, H, W) float in [-1, 1], any size.
            return_input: also return the preprocessed encoder input (B, 3, S, S).

        Returns:
            list of L tensors (B, N, C) (N = (S / patch)^2, last level final-normed), or (levels, input).
        """
        vfm = self.vfm
        ref = next(vfm.parameters())
        if ref.device != images.device:  # a deep copy moved elsewhere: follow the images
            vfm.to(images.device)
        return vfm(images, return_input=return_input)

    # -- pieces -------------------------------------------------------------------------------
    def _check_images(self, images: torch.Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(f"images must be float (B, 3, H, W) in [-1, 1], got {images.dtype} {tuple(images.shape)}")

    def _check_codes(self, codes: torch.Tensor) -> None:
        if codes.dim() != 2 or codes.shape[1] != self.config.num_tokens:
            raise ValueError(f"codes must be (B, {self.config.num_tokens}) integers, got shape {tuple(codes.shape)}")
        if codes.is_floating_point():
            raise ValueError(f"codes must be an integer tensor, got {codes.dtype}")

    def _post_quant(self, quant: torch.Tensor) -> torch.Tensor:
        """(B, L, d) fp32 code vectors -> (B, L, D) (12 -> 512 projection, in the module's dtype)."""
        return self.post_slots_quant(quant.to(self.post_slots_quant.weight.dtype))

    def decode_slots(self, post_quant: torch.Tensor, with_semantic: bool = False):
        """(B, L, D) post-quant features -> (recon (B, 3, S, S), semantic (B, P, C) or None)."""
        grid, semantic = self.decode_transformer(post_quant, with_semantic=with_semantic)
        return self.decoder(grid), semantic

    # -- public API ---------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, return_semantic: bool = True) -> TokenizerOutput:
        """Training forward: encode, quantize (straight-through), decode.

        Args:
            images: (B, 3, H, W) float in [-1, 1] (resized to S for the encoder).
            return_semantic: also run the semantic pass and return the VFM target.

        Returns:
            TokenizerOutput with recon (B, 3, S, S), codes (B, L), VQ losses, semantic pred/target (B, P, C).
        """
        self._check_images(images)
        levels = self.vfm_features(images)
        slots = self.encode_transformer(levels)
        q = self.slot_quantize(self.pre_slots_quant(slots))
        recon, semantic = self.decode_slots(self._post_quant(q.quant), with_semantic=return_semantic)
        target = levels[-1].detach() if return_semantic else None
        return TokenizerOutput(recon, q.codes, q.codebook_loss, q.commit_loss, semantic, target)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, return_distance_gap: bool = False, return_second: bool = False):
        """Images -> code indices.

        Args:
            images: (B, 3, H, W) float in [-1, 1], any size (resized to S as the official encoder does).
            return_distance_gap: also return (B, L) float32 second-smallest minus smallest squared distance.
            return_second: also return (B, L) int64 second-nearest codes (VFMTok-RAR's top-2 augmentation).

        Returns:
            codes (B, L) int64 in [0, K), raster order; or a tuple (codes, gap?, second?) in that order.
        """
        self._check_images(images)
        slots = self.encode_transformer(self.vfm_features(images))
        q = self.slot_quantize(self.pre_slots_quant(slots))
        extra = ([q.distance_gap] if return_distance_gap else []) + ([q.second_codes] if return_second else [])
        return (q.codes, *extra) if extra else q.codes

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Code indices (B, L) int -> images (B, 3, S, S) float, unbounded (nominally [-1, 1]).

        Raises:
            ValueError: wrong shape, non-integer codes, or an index outside [0, K).
        """
        self._check_codes(codes)
        quant = self.slot_quantize.lookup(codes.to(self.post_slots_quant.weight.device))
        recon, _ = self.decode_slots(self._post_quant(quant))
        return recon

    @torch.no_grad()
    def trace(self, images: torch.Tensor, semantic: bool = True) -> dict[str, torch.Tensor]:
        """Every intermediate of an inference pass, named like the authors' parity fixtures.

        Keys: backbone_input, dino_levels.{i}, projected_levels.{i}, reference_points,
        deform_sampling_locations.{l}, deform_attention_weights.{l}, encoder_layer_outputs.{l}, slots,
        pre_quant, indices, quant, code_distance_gap, post_quant, pixel_grid_tokens, decoded,
        vq_codebook_loss, vq_commit_loss and (with `semantic`) semantic_pred.
        """
        self._check_images(images)
        out: dict[str, torch.Tensor] = {}
        levels, out["backbone_input"] = self.vfm_features(images, return_input=True)
        debug: dict[str, Any] = {}
        slots = self.encode_transformer(levels, debug=debug)
        for i, feats in enumerate(levels):
            out[f"dino_levels.{i}"] = feats
        for i, feats in enumerate(debug["projected_levels"]):
            out[f"projected_levels.{i}"] = feats
        out["reference_points"] = debug["reference_points"]
        for i, info in enumerate(debug["layers"]):
            out[f"deform_sampling_locations.{i}"] = info["sampling_locations"]
            out[f"deform_attention_weights.{i}"] = info["attention_weights"]
            out[f"encoder_layer_outputs.{i}"] = info["output"]
        out["slots"] = slots
        out["pre_quant"] = pre = self.pre_slots_quant(slots)
        q = self.slot_quantize(pre)
        out.update(indices=q.codes, quant=q.quant, code_distance_gap=q.distance_gap,
                   vq_codebook_loss=q.codebook_loss, vq_commit_loss=q.commit_loss)
        out["post_quant"] = post = self._post_quant(q.quant)
        out["pixel_grid_tokens"], sem = self.decode_transformer(post, with_semantic=semantic)
        out["decoded"] = self.decoder(out["pixel_grid_tokens"])
        if semantic:
            out["semantic_pred"] = sem
        return out


# ---------------------------------------------------------------------------------------------
# factories and weights I/O
# ---------------------------------------------------------------------------------------------
def resolve_config(name_or_config: str | TokenizerConfig | dict, **overrides: Any) -> TokenizerConfig:
    """A preset name, a config, or a config dict (+ field overrides) -> TokenizerConfig.

    Raises:
        KeyError: unknown preset (lists the presets). ValueError: unknown override/config keys.
    """
    if isinstance(name_or_config, str):
        if name_or_config not in TOKENIZER_PRESETS:
            raise KeyError(f"unknown tokenizer preset {name_or_config!r}; available: {', '.join(sorted(TOKENIZER_PRESETS))}")
        config = TOKENIZER_PRESETS[name_or_config]()
    elif isinstance(name_or_config, dict):
        config = config_from_dict(TokenizerConfig, name_or_config)
    elif isinstance(name_or_config, TokenizerConfig):
        config = copy.deepcopy(name_or_config)
    else:
        raise TypeError(f"expected a preset name, TokenizerConfig or dict, got {type(name_or_config).__name__}")
    if overrides:
        merged = {**config_to_dict(config), **overrides}
        config = config_from_dict(TokenizerConfig, merged)
    return config


def create_tokenizer(name_or_config: str | TokenizerConfig | dict = "tiny", encoder_weights: str | Path | None = None,
                     **overrides: Any) -> VFMTokenizer:
    """Build a randomly initialised tokenizer around a frozen encoder.

    Args:
        name_or_config: preset name ("vfmtok-l", "tiny"), a TokenizerConfig, or a config dict.
        encoder_weights: None (config default: timm pretrained weights or the seeded random init), "random",
            or a weights file (timm state dict or official DINOv2 `.pth`).
        **overrides: TokenizerConfig fields to change (e.g. codebook_size=4096).

    Returns:
        VFMTokenizer in training mode (the frozen encoder stays in eval mode).

    Raises:
        KeyError, ValueError, RuntimeError, FileNotFoundError: see `resolve_config` and `VFMTokenizer`.
    """
    return VFMTokenizer(resolve_config(name_or_config, **overrides), encoder_weights=encoder_weights)


def save_tokenizer(tok: VFMTokenizer, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write `directory/tokenizer.safetensors` (trainable weights, frozen encoder excluded) and
    `directory/config.json` ({"format", "format_version", "tokenizer": config, "encoder_weights", **extra}).

    Args:
        tok: the tokenizer (any device; tensors are copied to CPU, float dtype kept).
        directory: created if missing; existing files of the same names are overwritten.
        extra: additional JSON-serialisable entries for config.json (e.g. provenance).

    Returns:
        The directory path.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in tok.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": FORMAT})
    source = tok.encoder_source
    if Path(source).is_file():
        source = str(Path(source).resolve())
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "tokenizer": config_to_dict(tok.config),
            "encoder_weights": source, **(extra or {})}
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    return directory


def _config_from_json(path: Path) -> TokenizerConfig:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read the tokenizer config ({err})") from err
    section = data.get("tokenizer", data) if isinstance(data, dict) else None
    if not isinstance(section, dict):
        raise ValueError(f"{path}: expected a JSON object with a 'tokenizer' config")
    try:
        return config_from_dict(TokenizerConfig, section)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: invalid tokenizer config: {err}") from err


def load_tokenizer(path: str | Path, encoder_weights: str | Path | None = None,
                   config: str | TokenizerConfig | dict | None = None, map_location: str | torch.device = "cpu"
                   ) -> VFMTokenizer:
    """Load a tokenizer for inference (returned in eval mode).

    Args:
        path: one of
            * a run directory holding `tokenizer.safetensors` + `config.json`;
            * a `.safetensors` file with `config.json` beside it;
            * the authors' `vfmtok-tokenizer.pt` (its `ema` entry; config = `vfmtok-l` unless `config` is given),
              loaded strictly: every key consumed, shapes equal, only the frozen encoder absent
              (`slot_quantize.codebook_used` is accepted and ignored; backbone keys, if present, are used
              as encoder weights when `encoder_weights` is None).
        encoder_weights: frozen encoder source (see `create_tokenizer`); None = what the run recorded
            (its weights file if it still exists), else the config default.
        config: override the config (preset name, TokenizerConfig or dict); needed for official files of a
            non-default shape.
        map_location: device to place the model on.

    Raises:
        FileNotFoundError: path or companion files missing. ValueError: keys/shapes do not match (names them).
    """
    from vfmtok.convert import load_official_tokenizer_state, strict_load

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer checkpoint not found: {path}")
    recorded = None
    if path.is_dir() or path.suffix == ".safetensors":
        weights = path / WEIGHTS_FILE if path.is_dir() else path
        cfg_file = weights.parent / CONFIG_FILE
        for needed in (weights, cfg_file):
            if not needed.is_file():
                raise FileNotFoundError(f"{needed} not found (a tokenizer run holds {WEIGHTS_FILE} and {CONFIG_FILE})")
        cfg = resolve_config(config) if config is not None else _config_from_json(cfg_file)
        recorded = json.loads(cfg_file.read_text()).get("encoder_weights")
        from safetensors.torch import load_file

        state = load_file(str(weights))
        backbone = None
    else:
        cfg = resolve_config(config if config is not None else "vfmtok-l")
        state, backbone = load_official_tokenizer_state(path)
    if encoder_weights is None and recorded not in (None, "pretrained", "random") and Path(recorded).is_file():
        encoder_weights = recorded
    if encoder_weights is None and backbone:
        tok = VFMTokenizer(cfg, encoder_weights=backbone)
        tok.encoder_source = f"{path}#backbone"
    else:
        try:
            tok = VFMTokenizer(cfg, encoder_weights=encoder_weights)
        except (RuntimeError, FileNotFoundError) as err:
            if encoder_weights is None and recorded not in (None, "pretrained", "random"):
                raise type(err)(f"{err} (the run recorded encoder weights {recorded}, which were not found; "
                                "pass encoder_weights=PATH)") from err
            raise
    strict_load(tok, state, source=str(path))
    return tok.to(map_location).eval()
