"""Evaluation metrics (ADM-suite compatible) and tokenizer reconstruction metrics.

Modules: ``inception`` (TF-2015 Inception features: pool3, sFID spatial, IS logits), ``weights`` (locating,
validating and converting the Inception weights), ``fid``, ``inception_score``, ``precision_recall``,
``reference`` (npz validation, feature passes, cached reference statistics), ``evaluate``
(``evaluate_samples``: the five ADM numbers with provenance), ``recon`` (PSNR, SSIM, codebook usage).
See docs/evaluate.md. Submodules are imported on use (torch-fidelity pulls in torchvision).
"""
