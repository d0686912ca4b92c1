"""Training engine shared by `train-tokenizer` and `train-ar` (accelerate, EMA, checkpoints, metrics).

Modules: `accel` (Accelerator set-up), `sampler` (rank-disjoint per-epoch shuffling), `data` (tokenizer training
data + ADM augmentation), `schedule` (warm-up then constant LR), `ema`, `checkpoint` (atomic save / resume / RNG),
`metrics` (metrics.jsonl, codebook-usage window), `trainer` (the generic loop), `train_tokenizer` (the recipe).
Import the submodules directly; this package import stays cheap.
"""
