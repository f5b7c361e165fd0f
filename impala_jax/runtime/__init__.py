"""The training run: thread ownership, the learner loop, checkpoints and metrics.

Submodules are imported where used (`from impala_jax.runtime import training`): `worker` is a
dependency of the acting components, which `training` itself imports.
"""
