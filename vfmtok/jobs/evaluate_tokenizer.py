"""Tokenizer reconstruction evaluation: rFID, rIS, PSNR, SSIM and codebook usage in one pass.

Protocol of the official VFMTok ``vqgan_test.py`` (``shared/reference/evaluation.md`` section 1.8): images are
ADM-centre-cropped at the tokenizer resolution S (336 for ``vfmtok-l``), encoded and decoded at S; both the
ground truth and the reconstruction are converted to uint8 (``clamp(127.5 x + 128, 0, 255)``, LlamaGen's
rounding) and PIL-resized (bicubic) to 256 x 256; rFID is the Fréchet distance between the Inception pool3
statistics of the reconstructions and of the ground truth of the same pass (the official script computes the
GT statistics on the fly too), rIS the Inception Score of the reconstructions. PSNR and SSIM are computed on
the 256 x 256 uint8 pairs as [0, 1] floats (data_range 1; the official data_range-2 SSIM is reported
separately and labelled). Codebook usage counts every code of the pass.
"""
from __future__ import annotations

from typing import Iterable, Literal

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from vfmtok.metrics.fid import feature_statistics, frechet_distance
from vfmtok.metrics.inception import InceptionFeatureExtractor
from vfmtok.metrics.inception_score import DEFAULT_SHUFFLE_SEED, SPLIT_SIZE, inception_score
from vfmtok.metrics.codebook import CodebookUsage
from vfmtok.metrics.recon import psnr, ssim

__all__ = ["EVAL_SIZE", "EvalPairs", "evaluate_reconstructions", "evaluate_tokenizer", "to_uint8_resized"]

EVAL_SIZE = 256


def to_uint8_resized(images: torch.Tensor, size: int = EVAL_SIZE) -> np.ndarray:
    """float (B, 3, S, S) in [-1, 1] -> uint8 (B, size, size, 3) via clamp(127.5 x + 128) and PIL bicubic.

    No resize when S == size.
    """
    arr = (images.detach().float() * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    if arr.shape[1:3] == (size, size):
        return arr
    return np.stack([np.asarray(Image.fromarray(a).resize((size, size), Image.BICUBIC)) for a in arr])


class EvalPairs(torch.utils.data.Dataset):
    """Wraps a dataset of (image float (3, S, S) in [-1, 1], label) into (image, gt_u8), where gt_u8 =
    ``to_uint8_resized(image)`` (uint8 (256, 256, 3)): the per-image PIL resize then runs in DataLoader workers."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        image = self.dataset[i][0]
        return image, torch.from_numpy(to_uint8_resized(image[None])[0])


@torch.no_grad()
def evaluate_reconstructions(
    tokenizer,
    batches: Iterable[torch.Tensor],
    extractor: InceptionFeatureExtractor,
    *,
    codebook_size: int,
    total: int | None = None,
    is_shuffle_seed: int | None = DEFAULT_SHUFFLE_SEED,
    fid_method: Literal["sqrtm", "eig", "eigh"] = "sqrtm",
    progress: bool = True,
    gt_statistics: tuple[np.ndarray, np.ndarray] | None = None,
    gt_statistics_out: dict | None = None,
) -> dict:
    """Reconstruct every image and score the reconstructions.

    Args:
        tokenizer: object with ``encode(images) -> codes (B, L) int`` and ``decode_codes(codes) -> (B, 3, S, S)``
            (``vfmtok.load_tokenizer`` / ``create_tokenizer`` models); images float in [-1, 1].
        batches: iterable of float (B, 3, S, S) ground-truth images in [-1, 1] (ADM centre crops at S), on the
            tokenizer's device; or of pairs (images, gt_u8) with gt_u8 = ``to_uint8_resized(images)`` already
            computed (uint8 (B, 256, 256, 3), e.g. by DataLoader workers: `EvalPairs`).
        extractor: Inception features (see :mod:`vfmtok.metrics.inception`).
        codebook_size: K, for the usage count.
        total: number of images (for the progress bar only).
        is_shuffle_seed, fid_method: as :func:`vfmtok.jobs.evaluate.evaluate_samples`.
        progress: tqdm bar.
        gt_statistics: (mu, sigma) of the ground truth's pool3 features from an earlier pass (the cache); the
            ground truth then does not go through Inception. gt_statistics_out: filled with "mu", "sigma" of
            the ground truth (computed or given).

    Returns:
        dict with ``rfid``, ``ris`` (None if the weights lack the fc layer), ``psnr``, ``ssim`` (data_range 1),
        ``ssim_official_data_range_2`` (the official scripts' variant, labelled), ``codebook_usage`` (fraction
        of the K codes used), ``codebook_perplexity``, ``codes_used``, ``count``, ``eval_size``.

    Raises:
        ValueError: fewer than 2 images (no covariance).
    """
    usage = CodebookUsage(codebook_size)
    gt_pool, rec_pool, rec_logits = [], [], []
    psnr_sum = ssim_sum = ssim2_sum = 0.0
    count = 0
    with tqdm(total=total, desc="reconstruct", unit="img", disable=not progress) as bar:
        for item in batches:
            images, gt_u8 = item if isinstance(item, (tuple, list)) else (item, None)
            codes = tokenizer.encode(images)
            recon = tokenizer.decode_codes(codes)
            usage.update(codes)
            gt_u8 = to_uint8_resized(images) if gt_u8 is None else np.asarray(gt_u8)
            rec_u8 = to_uint8_resized(recon)
            gt_f = torch.from_numpy(gt_u8).permute(0, 3, 1, 2).double() / 255
            rec_f = torch.from_numpy(rec_u8).permute(0, 3, 1, 2).double() / 255
            psnr_sum += float(psnr(gt_f, rec_f).sum())
            ssim_sum += float(ssim(gt_f, rec_f, 1.0).sum())
            ssim2_sum += float(ssim(gt_f, rec_f, 2.0).sum())
            if gt_statistics is None:
                gt_pool.append(extractor(gt_u8).pool3.cpu().numpy())
            rec_out = extractor(rec_u8)
            rec_pool.append(rec_out.pool3.cpu().numpy())
            if rec_out.logits is not None:
                rec_logits.append(rec_out.logits.cpu().numpy())
            count += len(gt_u8)
            bar.update(len(gt_u8))
    if count < 2:
        raise ValueError(f"tokenizer evaluation needs at least 2 images, got {count}")
    mu_r, sigma_r = feature_statistics(np.concatenate(rec_pool))
    mu_g, sigma_g = gt_statistics if gt_statistics is not None else feature_statistics(np.concatenate(gt_pool))
    if gt_statistics_out is not None:
        gt_statistics_out.update(mu=mu_g, sigma=sigma_g)
    ris = inception_score(np.concatenate(rec_logits), SPLIT_SIZE, is_shuffle_seed) if rec_logits else None
    return {
        "rfid": frechet_distance(mu_r, sigma_r, mu_g, sigma_g, fid_method),
        "ris": ris,
        "psnr": psnr_sum / count,
        "ssim": ssim_sum / count,
        "ssim_official_data_range_2": ssim2_sum / count,
        "codebook_usage": usage.usage(),
        "codebook_perplexity": usage.perplexity(),
        "codes_used": int((usage.counts > 0).sum()),
        "count": count,
        "eval_size": EVAL_SIZE,
    }


def evaluate_tokenizer(
    tokenizer_path: str,
    data_path: str,
    *,
    inception_weights: str | None = None,
    batch_size: int = 32,
    limit: int | None = None,
    device: str | torch.device = "auto",
    num_workers: int = 4,
    use_cache: bool = True,
    is_shuffle_seed: int | None = DEFAULT_SHUFFLE_SEED,
    fid_method: Literal["sqrtm", "eig", "eigh"] = "sqrtm",
    progress: bool = True,
    encoder_weights: str | None = None,
) -> dict:
    """Load a tokenizer and a dataset, run :func:`evaluate_reconstructions`, add provenance.

    Args:
        tokenizer_path: run directory, ``.safetensors`` or the authors' ``.pt`` (``vfmtok.load_tokenizer``).
        data_path: prepared data folder (``prepare-data`` output with ``manifest.json``) or an image folder
            (class folders / ImageNet root, val split). Images are ADM-centre-cropped at the tokenizer size.
        encoder_weights: frozen-encoder weights file (e.g. ``dinov2_vitl14_reg4_pretrain.pth``) for a tokenizer
            file that does not carry them (the authors' ``vfmtok-tokenizer.pt``); None = the run's own setting.
        limit: evaluate only the first ``limit`` images (the official protocol uses all 50 000 val images).
        num_workers: DataLoader processes decoding, cropping and resizing the ground truth.
        use_cache: read / write the ground truth's Inception statistics (`vfmtok.metrics.gt_stats_cache`; key:
            data fingerprint, image count, S, eval size, Inception weights sha256, fp32). A hit skips the ground
            truth's Inception pass and gives the same rFID as computing it.
        Other args: as :func:`vfmtok.jobs.evaluate.evaluate_samples`.

    Returns:
        The dict of :func:`evaluate_reconstructions` plus ``tokenizer``, ``data``, ``image_size``,
        ``codebook_size``, ``inception_weights``, ``protocol``, ``vfmtok_version``, ``device``, and
        ``gt_statistics`` {"source": "cache" | "computed" | "computed (cache off)", "key", "cache_path"}.

    Raises:
        FileNotFoundError / ValueError: from the tokenizer or dataset loaders, or the Inception weights.
    """
    from pathlib import Path

    from torch.utils.data import DataLoader, Subset

    import vfmtok
    from vfmtok.data.crops import AdmCenterCrop
    from vfmtok.data.datasets import ImageFolderDataset, PreparedDataset
    from vfmtok.device import resolve_device, set_tf32_for_job
    from vfmtok.io.hashing import sha256_file
    from vfmtok.metrics.gt_stats_cache import cache_dir, cache_key, listing_fingerprint, read_statistics, write_statistics
    from vfmtok.metrics.weights import load_inception_weights

    dev = resolve_device(device) if isinstance(device, str) else device
    tf32 = set_tf32_for_job("evaluate")  # Inception (and the tokenizer's fp32 regions) in true fp32
    tokenizer = vfmtok.load_tokenizer(tokenizer_path, encoder_weights=encoder_weights, map_location=dev)
    size, codebook_size = tokenizer.config.image_size, tokenizer.config.codebook_size
    transform = AdmCenterCrop(size)
    root = Path(data_path)
    if (root / "manifest.json").is_file():
        dataset = PreparedDataset(root, transform=transform)
    else:
        dataset = ImageFolderDataset(root, split="val", transform=transform)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    if (root / "manifest.json").is_file():
        fingerprint = {"manifest_sha256": sha256_file(root / "manifest.json")}
    else:
        fingerprint = {"listing_sha256": listing_fingerprint(root, [dataset.path(i) for i in range(count)])}
    if limit is not None:
        dataset = Subset(dataset, range(count))
    state, weights = load_inception_weights(inception_weights)
    key_record = {**fingerprint, "count": count, "image_size": size, "eval_size": EVAL_SIZE,
                  "inception_sha256": weights.sha256, "precision": "fp32", "crop": "adm_center"}
    key = cache_key(key_record)
    cached = read_statistics(key) if use_cache else None
    extractor = InceptionFeatureExtractor(state, has_fc=weights.has_fc).to(dev)
    loader = DataLoader(EvalPairs(dataset), batch_size=batch_size, shuffle=False, num_workers=num_workers)
    batches = ((images.to(dev), gt_u8.numpy()) for images, gt_u8 in loader)
    gt: dict = {}
    result = evaluate_reconstructions(tokenizer, batches, extractor, codebook_size=codebook_size, total=len(dataset),
                                      is_shuffle_seed=is_shuffle_seed, fid_method=fid_method, progress=progress,
                                      gt_statistics=cached, gt_statistics_out=gt)
    cache_path = None
    if use_cache and cached is None:
        cache_path = write_statistics(key, gt["mu"], gt["sigma"], key_record)
    result["gt_statistics"] = {
        "source": "cache" if cached is not None else "computed" if use_cache else "computed (cache off)",
        "key": key, "cache_path": str(cache_path or (cache_dir() / f"{key}.npz")) if use_cache else None}
    result.update(
        tokenizer=str(tokenizer_path), data=str(data_path), image_size=size, codebook_size=codebook_size,
        inception_weights={"path": str(weights.path), "sha256": weights.sha256, "origin": weights.origin,
                           "official": weights.official, "has_fc": weights.has_fc},
        protocol={"crop": f"ADM centre crop at {size}", "to_uint8": "clamp(127.5x+128)",
                  "resize": f"PIL bicubic {size} -> {EVAL_SIZE} (both sides)", "rfid_reference": "GT of the same pass",
                  "is_shuffle_seed": is_shuffle_seed, "fid_method": fid_method, "tf32": tf32},
        vfmtok_version=vfmtok.__version__, device=str(dev),
    )
    if result["ris"] is None:
        result["ris_status"] = "unavailable (Inception weights without the fc layer)"
    return result
