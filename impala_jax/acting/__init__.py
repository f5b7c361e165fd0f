"""Acting: actor threads that step EnvPool, and the central inference server they call."""

from impala_jax.acting.actor import Actor
from impala_jax.acting.inference import ActResult
from impala_jax.acting.inference import InferenceServer
from impala_jax.acting.inference import InferenceStats
from impala_jax.acting.unroll_buffer import UnrollBuffer
