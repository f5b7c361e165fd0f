r"""The cost model of benchmarks/multihost_learner.py: the learner's speed on N hosts.

A host's update is its compute, then its all-reduces, on the critical path (the optimizer
step needs the averaged gradients). With a ring all-reduce over N devices (2(N−1) steps):

    ms/update(N) = t₁ + k·2(N−1)·α + 2(N−1)/N · S/β,    samples/s(N) = N·B·T / ms/update(N)

  t₁  one process's ms per update on its own batch (measured): each host keeps its batch, so
      its compute does not change with N.
  k   arrays one update all-reduces, counted in its compiled HLO. The update all-reduces its
      gradients and its metrics each as one flat buffer (`update.pmean_as_one_buffer`), so
      k = 2 per optimizer step; XLA's CPU runtime hands gloo one array at a time, and each
      pays every ring step's latency.
  α   the latency of one ring step, per array, ms.
  S   the gradients' bytes (the parameters', float32); β the link's bandwidth, bytes/s.

α and β are fitted on loopback to the medians of a group's all-reduces of the same S bytes as
the parameter tree (k_tree arrays) and as one flat array: with X = 2(D−1)/D · S/β on D devices,
tree = k_tree·2(D−1)·α + X and flat = 2(D−1)·α + X. A lone one-float all-reduce, against the
model's one-array time 2(D−1)·α, is the check. They are also given for an assumed link.

Left out: the metrics buffer's bytes (a few floats: only its α-terms count), stragglers (a
synchronous all-reduce waits for the slowest host), the training loop's per-update stop
agreement (one more small collective: one more α-term), any overlap of communication with
compute, and gloo's choice of algorithm, which need not be a ring.
"""

from typing import Any, Dict, Mapping, Sequence

# Group sizes the cost model predicts for.
MODEL_HOSTS = (1, 2, 4, 8, 16, 32)
FORMULA = "ms/update(N) = t1 + k·2(N-1)·alpha + 2(N-1)/N · S/beta"


def fit_loopback(allreduce: Mapping[str, Any]) -> Dict[str, float]:
  """α (ms) and β (bytes/s) from a group's all-reduce medians (see the module doc).

  Args:
    allreduce: `multihost_worker.measure_allreduce`'s result plus `global_devices` (D).

  Returns:
    `alpha_ms` and `bytes_per_second` (inf when the flat all-reduce took no time beyond its
    latencies: latency-bound, the bandwidth not measurable).
  """
  d = allreduce["global_devices"]
  steps = 2 * (d - 1)
  k_tree = allreduce["operands_params_tree"]
  tree, flat = allreduce["median_ms_params_tree"], allreduce["median_ms_flat"]
  if k_tree > 1 and tree > flat:
    # The cost of one more array in an all-reduce of several, as the update's are.
    alpha_ms = (tree - flat) / ((k_tree - 1) * steps)
  else:  # One array, or no measurable difference: the lone one-float all-reduce's latency.
    alpha_ms = allreduce["median_ms_one_float"] / steps
  transfer_ms = max(0.0, flat - steps * alpha_ms) * d / steps  # S/β
  payload = allreduce["payload_bytes"]
  bandwidth = payload / (transfer_ms / 1000.0) if transfer_ms > 0 else float("inf")
  return dict(alpha_ms=alpha_ms, bytes_per_second=bandwidth)


def allreduce_ms(hosts: int, arrays: int, payload_bytes: int, alpha_ms: float,
                 bytes_per_second: float) -> float:
  """The model's ms for `arrays` arrays of `payload_bytes` in all over a ring of `hosts`."""
  return (arrays * 2 * (hosts - 1) * alpha_ms +
          2 * (hosts - 1) / hosts * payload_bytes / bytes_per_second * 1000.0)


def cost_model(ms_per_update_one: float, samples_per_update_one: int,
               allreduce: Mapping[str, Any], update_operands: int, link_gbps: float,
               link_latency_us: float, hosts: Sequence[int] = MODEL_HOSTS) -> Dict[str, Any]:
  """Predicted learner speed on `hosts` machines, one learner device each (module doc).

  Args:
    ms_per_update_one: t₁, one process's ms per update on its per-process batch.
    samples_per_update_one: B·T, the per-process samples per update.
    allreduce: a group's `measure_allreduce` result plus its `global_devices`.
    update_operands: k, the arrays one update all-reduces.
    link_gbps, link_latency_us: the assumed link between hosts.
    hosts: the group sizes to predict.

  Returns:
    the formula, t₁, S, k, the check, and per link (fitted loopback, assumed): α (ms), β
    (bytes/s) and per N (a string key) the all-reduce ms, ms/update, samples/s and the
    scaling efficiency (samples/s ÷ (N × one process's)).
  """
  payload = allreduce["payload_bytes"]
  links = {
      "loopback (fitted)": fit_loopback(allreduce),
      f"{link_gbps:g} Gbit/s, {link_latency_us:g} µs (assumed)": dict(
          alpha_ms=link_latency_us / 1000.0, bytes_per_second=link_gbps * 1e9 / 8)}
  for link in links.values():
    link["predictions"] = {}
    for n in hosts:
      ms_ar = allreduce_ms(n, update_operands, payload, link["alpha_ms"],
                           link["bytes_per_second"])
      ms = ms_per_update_one + ms_ar
      link["predictions"][str(n)] = dict(
          ms_per_update=ms, allreduce_ms=ms_ar,
          samples_per_second=n * samples_per_update_one / (ms / 1000.0),
          efficiency=ms_per_update_one / ms)
  d = allreduce["global_devices"]
  return dict(
      formula=FORMULA, t1_ms=ms_per_update_one, payload_bytes=payload,
      update_all_reduce_operands=update_operands,
      # The one all-reduce the fit did not use: a lone float's, against one array's latency.
      check=dict(one_float_ms_measured=allreduce["median_ms_one_float"],
                 one_float_ms_predicted=2 * (d - 1) * links["loopback (fitted)"]["alpha_ms"],
                 devices=d),
      links=links)
