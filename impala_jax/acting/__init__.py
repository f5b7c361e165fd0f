"""Acting: actor threads that step EnvPool, the central inference server they call, and the
batches their unrolls are assembled into for the learner."""

from impala_jax.acting.actor import Actor
from impala_jax.acting.batch_assembler import BatchAssembler
from impala_jax.acting.batch_assembler import stack_unrolls
from impala_jax.acting.inference import ActResult
from impala_jax.acting.inference import InferenceServer
from impala_jax.acting.inference import InferenceStats
from impala_jax.acting.unroll_buffer import UnrollBuffer
