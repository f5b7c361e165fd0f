"""inference: `inference.InferenceServer` called from one thread at several batch sizes."""

import functools
from typing import Any, Dict, Sequence

import numpy as np

from benchmarks import synthetic
from impala_jax import config as config_lib
from impala_jax.acting import inference

# Calls per batch size before timing starts (the first compiles).
_INFERENCE_WARMUP_CALLS = 2


def measure_inference(config: config_lib.TrainConfig, batch_sizes: Sequence[int],
                      calls: int) -> Dict[str, Any]:
  """`InferenceServer.act` from one thread, `calls` times per batch size.

  The server expects one request per batch (one client), so it never waits for more: each call
  is one policy step on exactly `batch_size` environments.

  Returns:
    Per batch size: samples/s, the mean latency of a call as the client sees it, and the
    server's own latency (policy call and device→host copy).
  """
  network, params, spec = synthetic.network_and_params(config)
  rng = np.random.default_rng(config.seed)
  results = {}
  server = inference.InferenceServer(
      network.apply, params, network.initial_state(1), num_envs=max(batch_sizes),
      batch_sizes=batch_sizes, seed=config.seed,
      batch_wait_ms=config.inference_batch_wait_ms, expected_requests=1)
  with server:
    for batch_size in batch_sizes:
      env_ids = np.arange(batch_size, dtype=np.int32)
      observation = synthetic.random_observations(rng, spec, (batch_size,))
      first = np.zeros((batch_size,), bool)
      act = functools.partial(server.act, env_ids, observation, first)
      for _ in range(_INFERENCE_WARMUP_CALLS):
        act()
      server.stats(reset=True)  # The server's own latency: timed calls only.
      seconds = synthetic.mean_seconds(act, calls)
      results[str(batch_size)] = dict(
          samples_per_second=batch_size / seconds,
          latency_ms=1000.0 * seconds,
          server_latency_ms=server.stats().mean_latency_ms)
  return dict(batch_sizes=results, calls=calls)
