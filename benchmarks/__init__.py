"""Throughput measurements of impala_jax, run by `benchmarks/throughput.py` (the command line,
also `python -m benchmarks.throughput`). One module per measurement: `raw_envpool` (EnvPool
alone), `end_to_end` (the real training system), `memory` (its RSS and growth),
`learner_only` (the project's learner against a plain reference) and `inference_only` (the
inference server); `synthetic` holds their shared helpers (random inputs, the network, timing)
and `report` the machine's description, the ratios and the printed table."""
