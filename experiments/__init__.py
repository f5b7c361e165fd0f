"""The edge: absl-flag entry points. Flags are parsed only here (common.py), turned into frozen
configs, and handed to `impala_jax`. Scripts run as `python experiments/atari.py ...`."""
