"""Publishing parameters late on purpose, to study policy lag.

The IMPALA paper's correction ablation (Espeholt et al. 2018, §5.3, Table 2) compares the
off-policy corrections as the lag between the acting and the learning policy grows. The lag a
run has by itself depends on its layout (actors, queue, batch); `delayed` adds a fixed amount
on top: the actors act with the parameters of `delay_updates` updates ago, so every unroll's
policy lag (`metrics.csv` policy_lag) is at least `delay_updates`.
"""

import collections
from typing import Any, Callable, Deque, Tuple

Publish = Callable[[Any, int], None]


def delayed(publish: Publish, delay_updates: int) -> Publish:
  """`publish`, handed each update's parameters `delay_updates` updates later.

  Until `delay_updates` updates have run the actors keep the parameters they started with.
  Holds `delay_updates` sets of parameters (the learner's outputs are fresh arrays, never
  donated, so holding them is safe).

  Raises:
    ValueError: `delay_updates` < 0.
  """
  if delay_updates < 0:
    raise ValueError(f"delay_updates must be >= 0, got {delay_updates}.")
  if delay_updates == 0:
    return publish
  pending: Deque[Tuple[Any, int]] = collections.deque()

  def publish_late(params: Any, version: int) -> None:
    pending.append((params, version))
    if len(pending) > delay_updates:
      publish(*pending.popleft())

  return publish_late
