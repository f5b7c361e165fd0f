"""Recurrent cores: an LSTM over time that resets its state where an episode starts."""

from typing import Any, NamedTuple, Tuple

from flax import linen as nn
import jax
import jax.numpy as jnp

from impala_jax import types


class LSTMState(NamedTuple):
  """Recurrent state of the LSTM core.

  Attributes:
    cell: `[B, lstm_size]` float32, the LSTM memory cell c.
    hidden: `[B, lstm_size]` float32, the LSTM output h.
  """

  cell: jax.Array
  hidden: jax.Array


class _ResettingLSTMStep(nn.Module):
  """One LSTM step that first zeroes the state of environments whose episode starts now.

  Args (of `__call__`):
    state: `LSTMState`, leaves `[B, features]`, the state after step t-1.
    inputs: `(x [B, F], first [B] bool)` for step t.

  Returns:
    `(new_state, output [B, features])`.
  """

  features: int

  @nn.compact
  def __call__(self, state: LSTMState,
               inputs: Tuple[jax.Array, jax.Array]) -> Tuple[LSTMState, jax.Array]:
    x, first = inputs
    # An episode's first step must not see the previous episode's memory.
    state = jax.tree.map(lambda s: jnp.where(first[:, None], jnp.zeros_like(s), s), state)
    (cell, hidden), output = nn.LSTMCell(self.features, name="cell")(
        (state.cell, state.hidden), x)
    # nn.LSTMCell returns a plain tuple; the scan carry must keep the LSTMState structure.
    return LSTMState(cell, hidden), output


class LSTMCore(nn.Module):
  """An LSTM over time that resets its state at episode starts.

  Args (of `__call__`):
    x: `[T, B, F]` features.
    first: `[T, B]` bool; True resets the state to zeros before step t.
    state: `LSTMState`, leaves `[B, features]`, the state before step 0.

  Returns:
    `(outputs [T, B, features], state after step T-1)`.
  """

  features: int

  @nn.compact
  def __call__(self, x: jax.Array, first: jax.Array,
               state: LSTMState) -> Tuple[jax.Array, LSTMState]:
    # Parameters are shared across time steps (broadcast), not stacked per step.
    scan_step = nn.scan(
        _ResettingLSTMStep,
        variable_broadcast="params",
        split_rngs={"params": False},
        in_axes=0,
        out_axes=0)
    state, outputs = scan_step(self.features, name="step")(state, (x, first))
    return outputs, state


def initial_core_state(network: Any, batch_size: int) -> types.CoreState:
  """The core state of `batch_size` environments at the start of their episodes.

  Needs no parameters, so the inference server and actors can call it before any exist.

  Args:
    network: anything with `use_lstm` and `lstm_size` attributes: an `ImpalaNetwork` or a
      `config.NetworkConfig`.
    batch_size: B.

  Returns:
    `LSTMState` with float32 zeros `[B, lstm_size]` in both fields if `network.use_lstm`,
    else `()`.
  """
  if not network.use_lstm:
    return ()
  zeros = jnp.zeros((batch_size, network.lstm_size), jnp.float32)
  return LSTMState(cell=zeros, hidden=zeros)
