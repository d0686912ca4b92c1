"""`vfmtok reproduce`: one command from the published checkpoints to a metric row beside the paper's.

`targets.py` (what each target needs and the paper's numbers), `files.py` (finding or fetching every input file),
`job.py` (sample, evaluate, write reproduce.json and the markdown row).
"""
