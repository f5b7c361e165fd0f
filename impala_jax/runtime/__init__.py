"""The training run: the learner loop, checkpoints, metrics, and the threads it owns.

Submodules are imported where used (`from impala_jax.runtime import training`). The thread
owner they share with the acting and distributed components is `impala_jax.threads`.
"""
