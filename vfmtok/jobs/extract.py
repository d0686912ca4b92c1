"""Encode a dataset once into a token store (`vfmtok extract-tokens`): views, ranks, resume, safety.

Views (`none`, `flip`, `ten-crop`): `vfmtok.data.views`. Sources (prepared data or an image folder):
`vfmtok.data.sources`.

`neighbours=2` (the VFMTok-RAR augmentation, reference section 9.1) stores, for every view, the
nearest-code sequence and the second-nearest-code sequence: A = 2 V, laid out as
`codes[n, k * V + v]` = the (k+1)-th nearest code at every position of view v. So the first V entries
are exactly the `neighbours=1` store. A = V for `neighbours=1`.

Distribution: the N images are cut into global batches [b B, (b+1) B) (B = batch size, the last one
short); rank r of W encodes the contiguous block of batches [nb r // W, nb (r+1) // W). Every batch holds
the same images whatever W, so the store is byte-identical for any world size on the same hardware, no
image is encoded twice and none is dropped. Resume re-encodes every batch that has any row not marked
done in `progress.npy`.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from einops import rearrange

from vfmtok.configs import config_to_dict
from vfmtok.data.token_store import format as tsf
from vfmtok.data.token_store import writer as tsw
from vfmtok.data.sources import ImageSource
from vfmtok.data.views import AUGMENTATIONS, TEN_CROP_SCALE, make_views, view_names
from vfmtok.device import autocast, autocast_dtype, resolve_device, set_tf32_for_job
from vfmtok.distributed import barrier, broadcast, init_from_env
from vfmtok.imageops import uint8_to_unit

__all__ = [
    "ExtractOptions",
    "StoreMismatchError",
    "extract_tokens",
    "plan_batches",
    "tokenizer_fingerprint",
]

class StoreMismatchError(ValueError):
    """The output directory holds a store made with other settings (or something that is not a store)."""


class _ViewsDataset(torch.utils.data.Dataset):
    """Item i = (i, views (V, 3, S, S) uint8, label) of an ImageSource (runs in dataloader workers)."""

    def __init__(self, source: ImageSource, size: int, aug: str) -> None:
        self.source, self.size, self.aug = source, size, aug

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, int]:
        image, label = self.source.load(index)
        views = make_views(image, self.size, self.aug)
        return index, torch.from_numpy(views), int(label)


# ---------------------------------------------------------------------------------------------
# Planning and fingerprints
# ---------------------------------------------------------------------------------------------
def plan_batches(num_images: int, batch_size: int, world_size: int, rank: int) -> list[range]:
    """The global batches rank `rank` of `world_size` encodes (contiguous, disjoint, covering all).

    Global batch b = range(b B, min((b+1) B, N)); rank r gets batches [nb r // W, nb (r+1) // W),
    nb = ceil(N / B). Ranks may get none when nb < W.
    """
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"plan_batches: bad batch_size={batch_size}, world_size={world_size}, rank={rank}")
    nb = math.ceil(num_images / batch_size)
    first, last = nb * rank // world_size, nb * (rank + 1) // world_size
    return [range(b * batch_size, min((b + 1) * batch_size, num_images)) for b in range(first, last)]


def tokenizer_fingerprint(tokenizer: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes), sorted by name.

    Includes the frozen encoder (`tokenizer.vfm`, which VFMTokenizer keeps outside its own parameters
    and state_dict), so two tokenizers that can give different codes never share a fingerprint.
    Hashes ~1.5 GB for vfmtok-l (a few seconds).
    """
    tensors = {**dict(tokenizer.named_parameters()), **dict(tokenizer.named_buffers())}
    vfm = getattr(tokenizer, "vfm", None)
    if isinstance(vfm, torch.nn.Module) and not any(m is vfm for m in tokenizer.modules()):
        tensors.update({f"vfm.{k}": v for k, v in [*vfm.named_parameters(), *vfm.named_buffers()]})
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()






# ---------------------------------------------------------------------------------------------
# Core
# ---------------------------------------------------------------------------------------------
@dataclass
class ExtractOptions:
    """Settings of one extraction (CLI options of `vfmtok extract-tokens`).

    Attributes:
        aug: 'none' | 'flip' | 'ten-crop' (views per image: 1, 2, 10).
        neighbours: 1 (nearest code) or 2 (also the second-nearest code: A = 2 V).
        batch_size: images per encoder step (the model sees batch_size x V crops).
        num_workers: dataloader worker processes decoding and cropping images.
        device: 'auto' | 'cpu' | 'cuda' | 'cuda:N' (under a launcher 'auto'/'cuda' means cuda:LOCAL_RANK).
        mixed_precision: 'no' | 'bf16' | 'fp16' autocast on CUDA (CPU always fp32).
        overwrite: replace an existing store made with other settings.
        flush_batches: mark rows done (after syncing codes) at least every this many batches.
        flush_seconds: ... and at least every this many seconds.
        progress: show a tqdm bar (main process only).
    """

    aug: str = "none"
    neighbours: int = 1
    batch_size: int = 64
    num_workers: int = 4
    device: str = "auto"
    mixed_precision: str = "bf16"
    overwrite: bool = False
    flush_batches: int = 50
    flush_seconds: float = 60.0
    progress: bool = True


def _supports_topk(tokenizer: Any) -> bool:
    if callable(getattr(tokenizer, "encode_topk", None)):
        return True
    try:
        return "return_second" in inspect.signature(tokenizer.encode).parameters
    except (TypeError, ValueError, AttributeError):
        return False


def _encode(tokenizer: Any, images: torch.Tensor, neighbours: int) -> torch.Tensor:
    """(n, 3, S, S) float in [-1, 1] -> (n, L, k) int64 codes, nearest first.

    neighbours=2 uses `tokenizer.encode_topk(images, 2)` when present, else VFMTokenizer's
    `encode(images, return_second=True)` (second-nearest code by the quantizer's l2 distance).
    """
    if neighbours == 1:
        return tokenizer.encode(images)[..., None]
    if callable(getattr(tokenizer, "encode_topk", None)):
        return tokenizer.encode_topk(images, neighbours)
    first, second = tokenizer.encode(images, return_second=True)
    return torch.stack([first, second], dim=-1)


def _prepare_store(out: Path, layout: tsf.StoreLayout, manifest: dict[str, Any], overwrite: bool) -> str:
    """Create, reuse or refuse `out` (main process). Returns 'created' | 'resume' | 'complete'."""
    if out.exists() and not out.is_dir():
        raise StoreMismatchError(f"{out} exists and is not a directory")
    present = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    foreign = [name for name in present if name not in tsf.STORE_FILES and not name.startswith(".")]
    if (out / tsf.MANIFEST_FILE).is_file():
        try:
            existing = tsf.read_manifest(out)
        except ValueError as err:
            raise StoreMismatchError(f"{out} holds a manifest.json that is not a token store's; refusing ({err})")
        diffs = tsf.store_differences(existing, manifest["settings"])
        if not diffs:
            return "complete" if existing.get("complete") else "resume"
        if not overwrite:
            raise StoreMismatchError(
                f"{out} holds a token store made with other settings; use another OUT or pass --overwrite:\n  "
                + "\n  ".join(diffs)
            )
    if foreign:
        raise StoreMismatchError(
            f"{out} is not empty and is not a token store (found {', '.join(foreign[:5])}); choose an empty OUT"
        )
    tsw.create_store(out, layout, manifest)
    return "created"


def extract_tokens(
    source: ImageSource,
    out: str | Path,
    tokenizer: Any,
    options: ExtractOptions | None = None,
    tokenizer_info: dict[str, Any] | None = None,
    command: str | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, Any] | None:
    """Encode every image of `source` into the token store `out` (all ranks call this).

    Args:
        source: the images (see :class:`ImageSource`), N >= 1.
        out: store directory (created; resumed when it holds an incomplete store with equal settings).
        tokenizer: object with `config.image_size`, `config.codebook_size`, `config.num_tokens`,
            `encode((B,3,S,S) float [-1,1]) -> (B,L) int64` and, for neighbours=2,
            `encode_topk(images, k) -> (B,L,k)`; an nn.Module (moved to the device, eval mode).
        options: :class:`ExtractOptions`.
        tokenizer_info: provenance merged into manifest["tokenizer"] (path, file sha256, ...).
        command: the command line recorded in the manifest.
        on_batch: called with the number of batches written so far by this rank (tests use it to
            simulate a kill).

    Returns:
        The completed manifest on the main process, None on other ranks.

    Raises:
        StoreMismatchError: `out` holds another configuration's store (without overwrite) or foreign files.
        ValueError: bad options, an empty source, or a tokenizer without `encode_topk` for neighbours=2.
    """
    opts = options or ExtractOptions()
    if opts.aug not in AUGMENTATIONS:
        raise ValueError(f"--aug {opts.aug!r}: expected one of {', '.join(AUGMENTATIONS)}")
    if opts.neighbours not in (1, 2):
        raise ValueError(f"--neighbours {opts.neighbours}: expected 1 or 2")
    if opts.neighbours == 2 and not _supports_topk(tokenizer):
        raise ValueError(
            f"--neighbours 2 needs a tokenizer with encode_topk(images, k) or encode(images, return_second=True); "
            f"{type(tokenizer).__name__} has neither"
        )
    if opts.batch_size < 1:
        raise ValueError(f"--batch-size {opts.batch_size}: expected >= 1")
    num_images = len(source)
    if num_images < 1:
        raise ValueError("the source holds no images")
    out = Path(out)
    rank, world, local_rank, created = init_from_env()
    try:
        return _extract(source, out, tokenizer, opts, tokenizer_info, command, on_batch, rank, world, local_rank)
    finally:
        if created:
            import torch.distributed as dist

            dist.destroy_process_group()


def _extract(source: ImageSource, out: Path, tokenizer: Any, opts: ExtractOptions, tokenizer_info: dict | None,
             command: str | None, on_batch: Callable[[int], None] | None, rank: int, world: int,
             local_rank: int) -> dict[str, Any] | None:
    """Body of :func:`extract_tokens` once the process group is known."""
    num_images = len(source)
    device = resolve_device(opts.device)
    if device.type == "cuda" and world > 1 and device.index is None:
        device = torch.device("cuda", local_rank)
    amp = autocast_dtype(opts.mixed_precision, device)
    tf32 = set_tf32_for_job("extract-tokens")
    cfg = tokenizer.config
    size, codebook, num_tokens = int(cfg.image_size), int(cfg.codebook_size), int(cfg.num_tokens)
    grid = int(math.isqrt(num_tokens))
    names = view_names(opts.aug)
    num_views = len(names)
    layout = tsf.StoreLayout(num_images, num_views * opts.neighbours, num_tokens, codebook)
    cfg_dict = config_to_dict(cfg) if hasattr(cfg, "__dataclass_fields__") else dict(vars(cfg))
    weights_sha = tokenizer_fingerprint(tokenizer) if rank == 0 else None
    settings = {
        "format_version": tsf.FORMAT_VERSION,
        "tokenizer_weights_sha256": weights_sha,
        "tokenizer_config": cfg_dict,
        "image_size": size,
        "aug": opts.aug,
        "neighbours": opts.neighbours,
        "num_images": num_images,
        "source_sha256": source.fingerprint,
        "compute_dtype": "fp32" if amp is None else str(amp).replace("torch.", ""),
    }
    manifest = {
        "settings": settings,
        "tf32": tf32,
        "grid_size": grid if grid * grid == num_tokens else None,
        "token_grid": [grid, grid] if grid * grid == num_tokens else [1, num_tokens],
        "num_classes": len(source.classes),
        "classes": list(source.classes),
        "tokenizer": {**(tokenizer_info or {}), "weights_sha256": weights_sha, "config": cfg_dict},
        "source": {**source.description, "sha256": source.fingerprint, "num_images": num_images},
        "crop": {
            "protocol": "adm-center-crop" if opts.aug != "ten-crop" else "llamagen-ten-crop",
            "image_size": size,
            "aug": opts.aug,
            "center_crop_size": int(size * TEN_CROP_SCALE) if opts.aug == "ten-crop" else size,
            "views": names,
            "neighbours": opts.neighbours,
            "pixel_mapping": "(x / 255 - 0.5) / 0.5, float32",
        },
        "augmentations": [
            {"index": k * num_views + v, "view": names[v], "neighbour_rank": k + 1}
            for k in range(opts.neighbours)
            for v in range(num_views)
        ],
        "batch_size": opts.batch_size,
        "world_size": world,
        "device": device.type,
        "command": command or " ".join(sys.argv),
    }

    manifest = json.loads(json.dumps(manifest))  # JSON-normalised (tuples -> lists) so comparisons are exact
    # Main process creates / checks the store; every rank learns the outcome.
    state: Any
    if rank == 0:
        try:
            state = _prepare_store(out, layout, manifest, opts.overwrite)
        except StoreMismatchError as err:
            state = err
    state = broadcast(state if rank == 0 else None, world)
    if isinstance(state, Exception):
        raise state
    if state == "complete":
        if rank == 0:
            print(f"{out}: token store already complete with these settings; nothing to do", file=sys.stderr)
        barrier(world)
        return tsf.read_manifest(out) if rank == 0 else None

    writer = tsw.StoreWriter(out)
    done = writer.done_mask()
    todo = [b for b in plan_batches(num_images, opts.batch_size, world, rank) if not done[b.start : b.stop].all()]
    model = tokenizer.to(device).eval() if isinstance(tokenizer, torch.nn.Module) else tokenizer
    loader = torch.utils.data.DataLoader(
        _ViewsDataset(source, size, opts.aug),
        batch_sampler=[list(b) for b in todo],
        num_workers=opts.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    bar = None
    if rank == 0 and opts.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(len(b) for b in todo), unit="img", desc=f"extract-tokens (rank 0 of {world})",
                   dynamic_ncols=True)
    written, last_flush = 0, time.monotonic()
    try:
        for indices, views, labels in loader:
            n = views.shape[0]
            images = uint8_to_unit(rearrange(views.to(device, non_blocking=True), "n v c h w -> (n v) c h w"))
            with torch.no_grad(), autocast(device, amp):
                codes = _encode(model, images, opts.neighbours)
            codes = rearrange(codes.long(), "(n v) l k -> n (k v) l", n=n, v=num_views).cpu().numpy()
            writer.write(indices.numpy(), codes, labels.numpy())
            written += 1
            if written % max(1, opts.flush_batches) == 0 or time.monotonic() - last_flush > opts.flush_seconds:
                writer.flush()
                last_flush = time.monotonic()
            if bar is not None:
                bar.update(n)
            if on_batch is not None:
                on_batch(written)
    finally:
        writer.close()  # marks done only rows whose codes were written (a hard kill skips this)
        if bar is not None:
            bar.close()
    barrier(world)
    result = None
    if rank == 0:
        result = tsw.finalize_store(out, {"command": manifest["command"], "world_size": world})
    barrier(world)
    return result
