"""The token store written by `extract-tokens` and read by `train-ar`: `format`, `writer`, `reader` (docs/token_store.md)."""
