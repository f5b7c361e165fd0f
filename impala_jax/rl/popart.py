"""PopArt: values learned in normalised units, one set of statistics per task.

van Hasselt et al. 2016, "Learning values across many orders of magnitude" (arXiv 1602.07714),
§2 and Algorithm 1; Hessel et al. 2019, "Multi-task Deep Reinforcement Learning with PopArt"
(arXiv 1809.04474), §3, which applies it per task to IMPALA.

The value head outputs normalised values n(x) `[..., K]`, one per task; task i's value is

  V_i(x) = σ_i n_i(x) + μ_i,

with μ_i, ν_i running first and second moments of task i's value targets v_s and σ_i their
standard deviation, clipped to [σ_min, σ_max]:

  μ_i ← μ_i + β Σ_{s: task(s) = i} (v_s − μ_i)
  ν_i ← ν_i + β Σ_{s: task(s) = i} (v_s² − ν_i)
  σ_i = sqrt(clip(ν_i − μ_i², σ_min², σ_max²))

The papers' update is μ ← (1 − β) μ + β v per target; a batch's targets are summed, as in
`rlax.art`: to first order in β that is one step per target, so a task's statistics move with
the number of its targets. The sum runs over every device's share of the batch (`axis_name`),
so all devices keep identical statistics. Each step moves μ by β N (mean − μ) for a task's N
targets, which overshoots the batch's own mean when β N > 1 (`config.TrainConfig` refuses that).

One learner step (van Hasselt et al. 2016, Algorithm 1; Hessel et al. 2019, §3):

  1. targets  v_s by V-trace (`rl.vtrace`) on the unnormalised V(x) = σ n(x) + μ, with the
              statistics before this step;
  2. ART      (μ, ν, σ) → (μ', ν', σ') from this batch's targets (`art`, above);
  3. POP      rescale the value head's last linear layer, per task column i (`pop`):
                w'_i = (σ_i / σ'_i) w_i,    b'_i = (σ_i b_i + μ_i − μ'_i) / σ'_i,
              so that σ'_i n'_i(x) + μ'_i = σ_i n_i(x) + μ_i for every x: the unnormalised
              values, and with them the targets of step 1, are preserved exactly;
  4. loss     on normalised targets, with the new statistics and the rescaled layer:
                baseline  ½ ((v_s − μ')/σ' − n'(x_s))²  =  ½ ((v_s − V(x_s)) / σ')²
                policy    −log π(a_s|x_s) · A_s / σ',   A_s = ρ_s (r_s + γ_s v_{s+1} − V(x_s))
              (`rl.objectives`, `value_scale` = σ' of each step's task), then the gradient
              step. Dividing by σ' makes each task's share of the gradient independent of the
              scale of its rewards, which is what lets one agent learn games whose scores differ
              by orders of magnitude.

`learning.update` runs these in this order; the statistics live in its `TrainState`.

Differences from rlax's PopArt (`rlax.popart`, `art`, `pop`; tests/rl/test_popart.py checks
these functions against it; rlax is a test dependency only, this package does not import it):
  * the linear layer is Flax's (`kernel` `[F, K]`, `bias` `[K]`), not Haiku's (`w`, `b`);
  * each target has a 0/1 weight (`mask`): EnvPool's autoreset steps are no transitions, and
    their v_s = V(x_s) would pull the statistics towards the network's own outputs;
  * a task with no target in the batch keeps its σ as it is (rlax recomputes it from ν − μ²,
    the same number when rlax wrote the state itself), and POP leaves its column bit for bit:
    b' is computed as b (σ/σ') + (μ − μ')/σ', which is exactly b when σ' = σ and μ' = μ,
    where rlax's (σ b + μ − μ')/σ' rounds b;
  * the moments are summed elementwise, not by a matrix product (an accelerator may multiply
    float32 matrices at reduced precision).
"""

import dataclasses
import math
from typing import Callable, Dict, Mapping, NamedTuple, Optional, Tuple

import chex
import jax
import jax.numpy as jnp

Array = chex.Array
# A linear layer's parameters as Flax's `nn.Dense` names them: kernel `[F, K]`, bias `[K]`.
Linear = Mapping[str, Array]


class PopArtState(NamedTuple):
  """Per-task statistics of the value targets, each `[K]` float32 (rlax's field names).

  Attributes:
    shift: μ, the targets' running mean.
    scale: σ = sqrt(ν − μ²), clipped to [σ_min, σ_max].
    second_moment: ν, the targets' running mean square.
  """

  shift: Array
  scale: Array
  second_moment: Array


@dataclasses.dataclass(frozen=True)
class PopArtSettings:
  """ART's step size and σ's bounds; this is their defaults' one source (`config.PopArtConfig`
  takes its defaults from here).

  Attributes:
    step_size: β, the statistics' step size per target (Hessel et al. 2019: 3e-4).
    scale_lb, scale_ub: σ_min and σ_max, the bounds of σ: 1e-4 and 1e6, wide enough not to
      bind on game scores; they only keep σ, a divisor, away from 0 and from overflow.

  Raises:
    ValueError: β outside (0, 1], or bounds that are not 0 < σ_min <= σ_max < inf.
  """

  step_size: float = 3e-4
  scale_lb: float = 1e-4
  scale_ub: float = 1e6

  def __post_init__(self):
    if not 0.0 < self.step_size <= 1.0:
      raise ValueError(f"popart step_size must be in (0, 1], got {self.step_size}.")
    if not 0.0 < self.scale_lb <= self.scale_ub < math.inf:
      raise ValueError(
          "popart scale bounds must satisfy 0 < scale_lb <= scale_ub < inf, got "
          f"scale_lb={self.scale_lb}, scale_ub={self.scale_ub}.")


def initial_state(num_tasks: int) -> PopArtState:
  """μ = 0, σ = 1, ν = 1 for each of `num_tasks` tasks: V = n at the start (rlax's too)."""
  if num_tasks < 1:
    raise ValueError(f"num_tasks must be >= 1, got {num_tasks}.")
  return PopArtState(shift=jnp.zeros([num_tasks], jnp.float32),
                     scale=jnp.ones([num_tasks], jnp.float32),
                     second_moment=jnp.ones([num_tasks], jnp.float32))


def _check_tasks(state: PopArtState, tasks: Array) -> None:
  chex.assert_rank([state.shift, state.scale, state.second_moment], 1)
  chex.assert_equal_shape([state.shift, state.scale, state.second_moment])
  chex.assert_type(tasks, int)


def select(outputs: Array, tasks: Array) -> Array:
  """Each step's own task's output: `outputs` `[..., K]`, `tasks` `[...]` → `[...]`."""
  chex.assert_type(tasks, int)
  chex.assert_equal_shape_prefix([outputs, tasks], tasks.ndim)
  chex.assert_rank(outputs, tasks.ndim + 1)
  return jnp.squeeze(jnp.take_along_axis(outputs, tasks[..., None], axis=-1), axis=-1)


def unnormalize(state: PopArtState, normalized: Array, tasks: Array) -> Array:
  """V = σ_task n + μ_task, elementwise (`normalized` and `tasks` of one shape)."""
  _check_tasks(state, tasks)
  chex.assert_equal_shape([normalized, tasks])
  return state.scale[tasks] * normalized + state.shift[tasks]


def normalize(state: PopArtState, unnormalized: Array, tasks: Array) -> Array:
  """n = (V − μ_task) / σ_task, elementwise: the inverse of `unnormalize`."""
  _check_tasks(state, tasks)
  chex.assert_equal_shape([unnormalized, tasks])
  return (unnormalized - state.shift[tasks]) / state.scale[tasks]


def art(state: PopArtState, targets: Array, tasks: Array, mask: Array,
        settings: PopArtSettings = PopArtSettings(), axis_name: Optional[str] = None
        ) -> PopArtState:
  """ART: the statistics after this batch's value targets (module docstring).

  Args:
    state: the statistics before, leaves `[K]`.
    targets: v_s, any shape (`[T, B]` for a learner batch).
    tasks: each target's task, int, same shape.
    mask: each target's 0/1 weight, same shape; 0 leaves it out (an ignored step).
    settings: β and σ's bounds.
    axis_name: the pmap/vmap axis whose devices' batches are summed; None for this batch only.

  Returns:
    The new statistics, stop-gradient'ed. A task with no target in the batch (on any device)
    keeps μ, ν and σ exactly.
  """
  _check_tasks(state, tasks)
  chex.assert_equal_shape([targets, tasks, mask])
  chex.assert_type([targets, mask], float)
  num_tasks = state.shift.shape[0]
  targets = jax.lax.stop_gradient(targets)
  # weights[s, i]: target s's weight for task i; one row per target.
  weights = (jax.nn.one_hot(tasks, num_tasks, dtype=targets.dtype) *
             mask[..., None]).reshape(-1, num_tasks)
  targets = jnp.where(mask > 0, targets, 0.0).reshape(-1, 1)  # A NaN at an ignored step stays out.
  # Per task: N_i, Σ v_s and Σ v_s², `[3, K]`, summed over the devices in one all-reduce.
  sums = jnp.stack([jnp.sum(weights, axis=0), jnp.sum(weights * targets, axis=0),
                    jnp.sum(weights * jnp.square(targets), axis=0)])
  if axis_name is not None:
    sums = jax.lax.psum(sums, axis_name)
  count, total, total_of_squares = sums
  beta = settings.step_size
  # β Σ (v − μ) = β (Σ v − N μ): exactly 0 for a task with no target.
  shift = state.shift + beta * (total - count * state.shift)
  second_moment = state.second_moment + beta * (total_of_squares - count * state.second_moment)
  variance = jnp.clip(second_moment - jnp.square(shift), settings.scale_lb ** 2,
                      settings.scale_ub ** 2)
  scale = jnp.where(count > 0, jnp.sqrt(variance), state.scale)
  return jax.lax.stop_gradient(PopArtState(shift, scale, second_moment))


def pop(linear: Linear, old: PopArtState, new: PopArtState) -> Dict[str, Array]:
  """POP: the value head's last linear layer rescaled so σ' n' + μ' = σ n + μ (module doc).

  Args:
    linear: Flax's `nn.Dense` parameters, `kernel` `[F, K]` and `bias` `[K]`; other entries
      are kept as they are.
    old: the statistics the layer was trained for.
    new: the statistics it is to serve (`art`'s result).

  Returns:
    The rescaled `kernel` and `bias`: w'_i = (σ_i/σ'_i) w_i, b'_i = (σ_i b_i + μ_i − μ'_i)/σ'_i.
  """
  chex.assert_rank([linear["kernel"], linear["bias"]], [2, 1])
  chex.assert_equal_shape([linear["bias"], old.shift, new.shift])
  ratio = old.scale / new.scale  # Exactly 1 for a task whose σ did not move.
  return dict(linear, kernel=linear["kernel"] * ratio,
              bias=linear["bias"] * ratio + (old.shift - new.shift) / new.scale)


class PopArt(NamedTuple):
  """PopArt as an (init, update) pair, like an optax transformation (`popart`).

  Attributes:
    init: `() -> PopArtState`, the initial statistics.
    update: `(linear, state, targets, tasks, mask) -> (linear', state')`: ART on the targets,
      then POP of the value head's linear layer (`art`, `pop`).
  """

  init: Callable[[], PopArtState]
  update: Callable[..., Tuple[Dict[str, Array], PopArtState]]


def popart(num_tasks: int, settings: PopArtSettings = PopArtSettings(),
           axis_name: Optional[str] = None) -> PopArt:
  """PopArt for `num_tasks` tasks: `PopArt(init, update)`, steps 2 and 3 of the module doc.

  Args:
    num_tasks: K, the value head's outputs.
    settings: β and σ's bounds.
    axis_name: the pmap axis whose devices share the statistics (`art`).
  """

  def init() -> PopArtState:
    return initial_state(num_tasks)

  def update(linear: Linear, state: PopArtState, targets: Array, tasks: Array,
             mask: Array) -> Tuple[Dict[str, Array], PopArtState]:
    new_state = art(state, targets, tasks, mask, settings, axis_name)
    return pop(linear, state, new_state), new_state

  return PopArt(init, update)
