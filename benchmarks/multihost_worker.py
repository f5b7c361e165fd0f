r"""One process of a benchmarks/multihost_learner.py measurement: learner, then all-reduces.

    python -m benchmarks.multihost_worker --num_processes=2 --process_id=0 \
        --coordinator_port=PORT --result_file=0.json ...   # started by multihost_learner

Alone (`--num_processes=1`) it times the learner (`learning.Learner`) on `--batch_size`
synthetic unrolls. In a group it first joins the others with `multihost.initialize` on
127.0.0.1:`--coordinator_port` (gloo CPU collectives; a loopback coordinator address makes
the coordination service listen on loopback only), times the same learner, whose update
all-reduces gradients and metrics over every device of every process, then times bare
all-reduces (`measure_allreduce`). It writes its results as JSON to `--result_file`.
"""

import json
import time
from typing import Any, Callable, Dict, Optional, Tuple

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

from benchmarks import synthetic
from impala_jax import config as config_lib
from impala_jax.distributed import multihost
from impala_jax.learning import learner as learner_lib
from impala_jax.runtime import training

# The pmap axis of the all-reduce measurement.
_AXIS = "processes"


def define_measurement_flags() -> None:
  """The flags a measurement's every process shares (the parent passes them on)."""
  flags.DEFINE_string("env", "Pong-v5", "Task whose observation and action shapes the "
                      "synthetic unrolls take (no environment is run).")
  flags.DEFINE_enum("network", "shallow", list(config_lib.TORSOS), "Network torso.")
  flags.DEFINE_integer("image_size", 84, "Atari frame size.")
  flags.DEFINE_integer("unroll_length", 20, "T, agent steps per unroll.")
  flags.DEFINE_integer("batch_size", 8, "Unrolls per update per process (the global batch is "
                       "num_processes × this).")
  flags.DEFINE_integer("num_processes", 2, "Processes in the multi-process learner.")
  flags.DEFINE_integer("warmup_updates", 2, "Updates (and compilation) before timing.")
  flags.DEFINE_integer("updates", 10, "Timed updates.")
  flags.DEFINE_integer("allreduce_iters", 50, "Timed all-reduces of each kind.")
  flags.DEFINE_integer("seed", 0, "Parameters and synthetic data (process i adds i).")
  flags.DEFINE_float("timeout_seconds", 900.0, "Per measurement: its processes are killed "
                     "after this long.")


def _define_worker_flags() -> None:
  flags.DEFINE_integer("process_id", 0, "This process's id in its group.")
  flags.DEFINE_integer("coordinator_port", 0, "The coordinator's port on 127.0.0.1.")
  flags.DEFINE_string("result_file", None, "Where this process's JSON result goes.")


def train_config(env: str, network: str, image_size: int, unroll_length: int,
                 batch_size: int, seed: int,
                 multihost_config: Optional[config_lib.MultiHostConfig] = None
                 ) -> config_lib.TrainConfig:
  """The training defaults, with what the benchmark sets; raises ValueError on bad values."""
  return config_lib.TrainConfig(
      env=config_lib.EnvConfig(env_id=env, image_size=image_size),
      network=config_lib.NetworkConfig(torso=network), unroll_length=unroll_length,
      batch_size=batch_size, seed=seed, multihost=multihost_config)


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def _top_level_operands(text: str) -> int:
  """Operands in `text`, the inside of an instruction's parentheses (shapes hold commas)."""
  count, depth = 0, 0
  for char in text:
    if char in "([{":
      depth += 1
    elif char in ")]}":
      depth -= 1
    elif char == "," and depth == 0:
      count += 1
  return count + 1 if text.strip() else 0


def all_reduce_operands(hlo_text: str) -> int:
  """Arrays a program's HLO all-reduces: the operands of its all-reduce instructions.

  XLA may combine several all-reduces into one instruction, but its CPU runtime hands gloo one
  operand at a time, so each operand pays the collective's latency.
  """
  count = 0
  for line in hlo_text.splitlines():
    for op in (" all-reduce(", " all-reduce-start("):
      if op in line:
        args, depth = line.split(op, 1)[1], 1
        for end, char in enumerate(args):  # Up to the matching parenthesis.
          depth += {"(": 1, ")": -1}.get(char, 0)
          if depth == 0:
            count += _top_level_operands(args[:end])
            break
  return count


def measure_learner(config: config_lib.TrainConfig, warmup_updates: int,
                    updates: int) -> Dict[str, Any]:
  """This process's view of `updates` learner updates on a fixed synthetic batch.

  In a group every process calls it with the same settings; each feeds its own batch (seeded
  by its process index) and all wait for one another at every update's all-reduce, so process
  0's clock measures the group. The clocks start after a barrier: no compilation is timed.

  Returns:
    global samples per update and per second, ms per update and the learner's split of it
    (transfer, dispatch, update), cores busy (this process's CPU seconds per wall second), the
    parameter count, the arrays one update all-reduces (None alone), and the last loss.
  """
  network, params, spec = synthetic.network_and_params(config)
  unrolls = synthetic.random_unrolls(spec, network, config.batch_size, config.unroll_length,
                                     config.seed + jax.process_index())
  batch = synthetic.assembled_batch(unrolls)
  learner = training.make_learner(network, params, config)
  for _ in range(warmup_updates):  # The first compiles.
    learner.step(batch)
  _barrier("impala_jax benchmark: learner timing starts")
  before = dict(learner.seconds)
  # process_time: CPU seconds of every thread of this process (XLA's included).
  cpu_before, start = time.process_time(), time.perf_counter()
  for _ in range(updates):
    metrics = learner.step(batch)
  seconds = (time.perf_counter() - start) / updates
  cores_busy = (time.process_time() - cpu_before) / (seconds * updates)
  samples = config.batch_size * config.unroll_length * jax.process_count()
  return dict(
      process_count=jax.process_count(), local_devices=jax.local_device_count(),
      global_devices=jax.device_count(),
      samples_per_update=samples, samples_per_second=samples / seconds,
      ms_per_update=1000.0 * seconds,
      ms_per_update_split={k: 1000.0 * (learner.seconds[k] - before[k]) / updates
                           for k in before},
      cores_busy=cores_busy,
      parameters=int(sum(np.size(x) for x in jax.tree.leaves(params))),
      last_loss=metrics["loss"],
      update_all_reduce_operands=_update_all_reduce_operands(learner, batch),
      updates=updates, warmup_updates=warmup_updates)


def _update_all_reduce_operands(learner: learner_lib.Learner, batch) -> Optional[int]:
  """Arrays one learner update all-reduces (2 per optimizer step); None alone."""
  if jax.process_count() == 1:
    return None  # XLA removes a one-device all-reduce: there is nothing to count.
  # The learner's own pmapped update, compiled again for its HLO (it is not run).
  lowered = learner._update.lower(  # pylint: disable=protected-access
      learner._state, learner.transfer(batch))  # pylint: disable=protected-access
  return all_reduce_operands(lowered.compile().as_text())


def _collective_ms(fn: Callable[[Any], Any], value: Any, iters: int) -> Tuple[float, float]:
  """(mean, median) ms of `fn(value)`, blocked on each call, after a warm-up call.

  The mean is the cost per update; the median, which a peer's occasional preemption on a
  busy machine does not move, is what the cost model is fitted on.
  """
  value = jax.block_until_ready(fn(value))  # Compiles; the result stays on the devices.
  _barrier("impala_jax benchmark: all-reduce timing starts")
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    # Its own output as the next input: no host→device copy in the timed loop.
    value = jax.block_until_ready(fn(value))
    times.append(time.perf_counter() - start)
  return 1000.0 * float(np.mean(times)), 1000.0 * float(np.median(times))


def measure_allreduce(config: config_lib.TrainConfig, iters: int) -> Dict[str, Any]:
  """ms per pmapped `jax.lax.pmean` over every device of every process, of three payloads.

  `flat`: one float32 array of as many elements as the network's parameters, what the update
  all-reduces (its gradients, flattened). `params_tree`: the same bytes as the parameter tree
  itself, one array per leaf (how the update all-reduced before: the difference is the cost of
  the extra arrays). `one_float`: one float32, the latency with host dispatch. Each is called
  `iters` times after a warm-up call, blocked on every time as the optimizer step blocks on its
  gradients. Every process of the group must call it (these are collectives); the payloads are
  zeros, which a mean keeps, so each call's output is the next call's input.

  Returns:
    `ms_<payload>` (mean) and `median_ms_<payload>`, the tree's leaf and all-reduced array
    counts, its bytes, and the bytes each device sends in a ring all-reduce.
  """
  _, params, _ = synthetic.network_and_params(config)
  local = jax.local_device_count()
  # One slice per local device, as pmap takes its inputs.
  tree = jax.tree.map(lambda x: np.zeros((local,) + np.shape(x), np.asarray(x).dtype), params)
  payload_bytes = int(sum(x[0].nbytes for x in jax.tree.leaves(tree)))
  elements = int(sum(x[0].size for x in jax.tree.leaves(tree)))
  flat = np.zeros((local, elements), np.float32)
  # No `devices`: in a group pmap spans the global devices, as the learner's does.
  pmean = jax.pmap(lambda x: jax.lax.pmean(x, _AXIS), axis_name=_AXIS)
  result = dict(operands_params_tree=all_reduce_operands(pmean.lower(tree).compile().as_text()),
                leaves=len(jax.tree.leaves(tree)), payload_bytes=payload_bytes, iters=iters)
  for name, value in (("params_tree", tree), ("flat", flat),
                      ("one_float", np.zeros((local,), np.float32))):
    result[f"ms_{name}"], result[f"median_ms_{name}"] = _collective_ms(pmean, value, iters)
  devices = jax.device_count()
  # Reduce-scatter then all-gather: each device sends 2(D−1)/D of the payload.
  result["ring_bytes_sent_per_device"] = int(2 * (devices - 1) / devices * payload_bytes)
  return result


def run_worker(f: flags.FlagValues) -> None:
  """The learner, then (in a group) the all-reduces; the JSON result to `f.result_file`."""
  multi = f.num_processes > 1
  multihost_config = None
  if multi:
    # Loopback: the coordination service then listens on 127.0.0.1 only (`bind_address`).
    multihost_config = config_lib.MultiHostConfig(
        coordinator_address=f"127.0.0.1:{f.coordinator_port}",
        num_processes=f.num_processes, process_id=f.process_id,
        initialization_timeout_seconds=max(1, int(f.timeout_seconds)))
    multihost.initialize(multihost_config)  # Before any other JAX call.
  config = train_config(f.env, f.network, f.image_size, f.unroll_length, f.batch_size, f.seed,
                        multihost_config)
  config.check_devices(jax.local_device_count())
  result = dict(process_id=f.process_id,
                learner=measure_learner(config, f.warmup_updates, f.updates))
  if multi:
    result["allreduce"] = measure_allreduce(config, f.allreduce_iters)
  with open(f.result_file, "w") as out:
    json.dump(result, out)
  if multi:
    multihost.shutdown()


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # jax.distributed's INFO lines are noise here.
  run_worker(flags.FLAGS)


if __name__ == "__main__":
  define_measurement_flags()
  _define_worker_flags()
  flags.mark_flag_as_required("result_file")
  app.run(main)
