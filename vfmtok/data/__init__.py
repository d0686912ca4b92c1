"""Data: decoding policy (`decode`), ADM crops (`crops`), dataset layouts and class index (`layouts`), prepared
shards (`shards`), dataset readers (`datasets`), the token store (`token_store/`), ADM npz batches (`adm_npz`) and
the demo photos (`demo`). See docs/data.md.

The `prepare-data` job that writes prepared shards is `vfmtok.jobs.prepare`. Importing this package is cheap (no
torch); import the submodules directly.
"""
