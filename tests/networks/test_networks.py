"""Tests for impala_jax.networks: shapes, parameter counts, LSTM resets, step/unroll equality.

Every array here is time-major `[T, B, ...]`; tests name the axis they slice.
"""

import chex
from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from impala_jax import config as config_lib
from impala_jax.rl import distributions
from impala_jax import networks

T, B = 2, 3  # time steps, batch (environments)
IMAGE_SHAPE = (4, 84, 84)  # EnvPool Atari: stack of 4 grayscale 84×84 frames, channel-first
VECTOR_SHAPE = (4,)  # e.g. CartPole
NUM_ACTIONS = 6
ACTION_DIM = 2


def _observation(torso, time_steps, batch_size, seed=0):
  """uint8 frames for the image torsos, float32 vectors for the MLP; `[T, B, *obs_shape]`."""
  rng = np.random.default_rng(seed)
  if torso == "mlp":
    return rng.normal(size=(time_steps, batch_size) + VECTOR_SHAPE).astype(np.float32)
  return rng.integers(0, 256, size=(time_steps, batch_size) + IMAGE_SHAPE, dtype=np.uint8)


def _random_core_state(network, batch_size, seed):
  """A non-zero core state, so that tests can tell whether it was used or reset."""
  keys = jax.random.split(jax.random.PRNGKey(seed), 2)
  shape = (batch_size, network.lstm_size)
  return networks.LSTMState(cell=jax.random.normal(keys[0], shape),
                            hidden=jax.random.normal(keys[1], shape))


def _count(params):
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))


def _abstract_params(network, observation_shape, dtype):
  """Parameter shapes without computing any (jax.eval_shape), `[T=1, B=1]` dummy input."""
  observation = jax.ShapeDtypeStruct((1, 1) + observation_shape, dtype)
  first = jax.ShapeDtypeStruct((1, 1), jnp.bool_)
  return jax.eval_shape(network.init, jax.random.PRNGKey(0), observation, first,
                        network.initial_state(1))


# ---------------------------------------------------------------------------------------------
# Shapes and dtypes.


@pytest.mark.parametrize("use_lstm", [False, True], ids=["ff", "lstm"])
@pytest.mark.parametrize("head", ["categorical", "gaussian"])
@pytest.mark.parametrize("torso", ["shallow", "nature", "deep", "mlp"])
def test_output_shapes_and_dtypes(torso, head, use_lstm):
  lstm_size = 32
  action_kwargs = ({"num_actions": NUM_ACTIONS} if head == "categorical" else
                   {"action_dim": ACTION_DIM})
  network = networks.ImpalaNetwork(torso=torso, use_lstm=use_lstm, lstm_size=lstm_size,
                                   **action_kwargs)
  observation = _observation(torso, T, B)
  first = np.zeros((T, B), bool)
  first[0] = True
  core_state = network.initial_state(B)

  # Shapes and dtypes only: jax.eval_shape traces the network without computing (the numbers
  # are checked by the tests below), which keeps 12 conv-net configurations cheap on CPU.
  params = jax.eval_shape(network.init, jax.random.PRNGKey(0), observation, first, core_state)
  output, new_core_state = jax.eval_shape(network.apply, params, observation, first, core_state)

  assert isinstance(output, networks.AgentOutput)
  chex.assert_shape(output.value, (T, B))
  chex.assert_type(output.value, jnp.float32)
  if head == "categorical":
    assert isinstance(output.policy, distributions.Categorical)
    chex.assert_shape(output.policy.logits, (T, B, NUM_ACTIONS))
    chex.assert_type(output.policy.logits, jnp.float32)
  else:
    assert isinstance(output.policy, distributions.DiagGaussian)
    chex.assert_shape([output.policy.mean, output.policy.log_std], (T, B, ACTION_DIM))
    chex.assert_type([output.policy.mean, output.policy.log_std], jnp.float32)

  if use_lstm:
    assert isinstance(new_core_state, networks.LSTMState)
    chex.assert_shape([new_core_state.cell, new_core_state.hidden], (B, lstm_size))
    chex.assert_type([new_core_state.cell, new_core_state.hidden], jnp.float32)
  else:
    assert new_core_state == ()


def test_deep_forward_pass_is_finite_and_bounded():
  """A real forward pass on uint8 frames: finite, and init keeps values at a sane scale.

  No LSTM here, so the heads see the ResNet's features directly (with ReLU-gain init they
  reached RMS ~27 on random frames; see networks.initializers.RESNET_INIT). The shallow net's
  numbers are checked in test_unroll_equals_stepping.
  """
  network = networks.ImpalaNetwork(torso="deep", num_actions=NUM_ACTIONS)
  observation = _observation("deep", T, B)
  first = np.ones((T, B), bool)
  params = network.init(jax.random.PRNGKey(0), observation, first, network.initial_state(B))
  output, core_state = network.apply(params, observation, first, network.initial_state(B))
  chex.assert_tree_all_finite((output, core_state))
  assert np.max(np.abs(output.value)) < 5.0
  # Logits are ~0.01 × feature scale (the policy head's init): this bounds the torso's output
  # RMS to O(1) as well (deep measured here: 0.03; with ReLU-gain ResNet init, 0.4).
  assert np.max(np.abs(output.policy.logits)) < 0.1


def test_initial_state_needs_no_params():
  network = networks.ImpalaNetwork(torso="mlp", num_actions=3, use_lstm=True, lstm_size=8)
  state = network.initial_state(5)  # unbound module: no init/apply
  assert isinstance(state, networks.LSTMState)
  chex.assert_shape([state.cell, state.hidden], (5, 8))
  chex.assert_type([state.cell, state.hidden], jnp.float32)
  assert not np.any(state.cell) and not np.any(state.hidden)
  # Same from a NetworkConfig, e.g. before the network is built.
  from_config = networks.initial_core_state(
      config_lib.NetworkConfig(torso="mlp", use_lstm=True, lstm_size=8), 5)
  chex.assert_trees_all_equal(state, from_config)
  # Feed-forward networks carry no state.
  assert networks.ImpalaNetwork(torso="mlp", num_actions=3).initial_state(5) == ()
  assert networks.initial_core_state(config_lib.NetworkConfig(), 5) == ()


def test_heads_start_near_uniform_and_unit_std():
  """The 0.01-scaled policy init gives a near-uniform policy; log σ starts at 0."""
  observation = _observation("mlp", T, B)
  first = np.ones((T, B), bool)
  categorical = networks.ImpalaNetwork(torso="mlp", num_actions=NUM_ACTIONS)
  params = categorical.init(jax.random.PRNGKey(1), observation, first, ())
  output, _ = categorical.apply(params, observation, first, ())
  np.testing.assert_allclose(output.policy.entropy(), np.log(NUM_ACTIONS), atol=1e-3)

  gaussian = networks.ImpalaNetwork(torso="mlp", action_dim=ACTION_DIM)
  params = gaussian.init(jax.random.PRNGKey(1), observation, first, ())
  chex.assert_shape(params["params"]["policy"]["log_std"], (ACTION_DIM,))
  output, _ = gaussian.apply(params, observation, first, ())
  np.testing.assert_array_equal(output.policy.log_std, np.zeros((T, B, ACTION_DIM)))


# ---------------------------------------------------------------------------------------------
# Parameter counts, by hand from the architecture (84×84×4 input, 6 actions, no LSTM).


def _conv(kernel, in_channels, out_channels):
  return kernel * kernel * in_channels * out_channels + out_channels  # weights + biases


def _dense(inputs, outputs):
  return inputs * outputs + outputs


HEADS = _dense(256, NUM_ACTIONS) + _dense(256, 1)  # policy logits 1,542 + value 257 = 1,799


def test_deep_parameter_count():
  # Stage 1: conv 4→16, then 2 residual blocks × 2 convs 16→16. 592 + 4·2,320 = 9,872.
  # Max-pool 3×3/2 'SAME': 84 → 42.
  stage1 = _conv(3, 4, 16) + 4 * _conv(3, 16, 16)
  # Stage 2: conv 16→32, 4 convs 32→32. 4,640 + 4·9,248 = 41,632. 42 → 21.
  stage2 = _conv(3, 16, 32) + 4 * _conv(3, 32, 32)
  # Stage 3: conv 32→32, 4 convs 32→32. 9,248 + 4·9,248 = 46,240. 21 → 11.
  stage3 = _conv(3, 32, 32) + 4 * _conv(3, 32, 32)
  # FC: 11·11·32 = 3,872 → 256: 991,488.
  fc = _dense(11 * 11 * 32, 256)
  expected = stage1 + stage2 + stage3 + fc + HEADS
  assert expected == 1_091_031  # ~1.1M on Atari.

  network = networks.ImpalaNetwork(torso="deep", num_actions=NUM_ACTIONS)
  assert _count(_abstract_params(network, IMAGE_SHAPE, jnp.uint8)) == expected

  # The often-quoted "about 1.6M" is the DMLab agent, which adds an LSTM 256 core: four gates,
  # each with input (256×256), recurrent (256×256) weights and one bias (256): 525,312 more,
  # 1,616,343 in all (DMLab also feeds last action and reward into the LSTM; we don't here).
  lstm = 4 * (256 * 256 + 256 * 256 + 256)
  with_lstm = networks.ImpalaNetwork(torso="deep", num_actions=NUM_ACTIONS, use_lstm=True)
  assert _count(_abstract_params(with_lstm, IMAGE_SHAPE, jnp.uint8)) == expected + lstm
  assert expected + lstm == 1_616_343


def test_shallow_parameter_count():
  # conv 16·8×8/4 'VALID': 84 → (84-8)/4+1 = 20; 4,112 params.
  # conv 32·4×4/2 'VALID': 20 → (20-4)/2+1 = 9; 8,224 params.
  # FC 9·9·32 = 2,592 → 256: 663,808 params.
  expected = _conv(8, 4, 16) + _conv(4, 16, 32) + _dense(9 * 9 * 32, 256) + HEADS
  assert expected == 677_943
  network = networks.ImpalaNetwork(torso="shallow", num_actions=NUM_ACTIONS)
  assert _count(_abstract_params(network, IMAGE_SHAPE, jnp.uint8)) == expected


def test_mlp_parameter_count():
  # 4 → 64 → 64, then heads on 64 features: 320 + 4,160 + (390 + 65) = 4,935.
  expected = _dense(4, 64) + _dense(64, 64) + _dense(64, NUM_ACTIONS) + _dense(64, 1)
  network = networks.ImpalaNetwork(torso="mlp", num_actions=NUM_ACTIONS)
  assert _count(_abstract_params(network, VECTOR_SHAPE, jnp.float32)) == expected == 4_935


# ---------------------------------------------------------------------------------------------
# The LSTM core: resets and step/unroll equivalence.

LSTM_T = 6
RESET_AT = 3  # time index of the episode start


@pytest.fixture(name="lstm_network")
def _lstm_network():
  network = networks.ImpalaNetwork(torso="mlp", num_actions=NUM_ACTIONS, use_lstm=True,
                                   lstm_size=16, mlp_hidden_sizes=(32,))
  observation = _observation("mlp", LSTM_T, B)
  params = network.init(jax.random.PRNGKey(0), observation, np.zeros((LSTM_T, B), bool),
                        network.initial_state(B))
  return network, params, observation


def test_lstm_reset_starts_fresh_sequence(lstm_network):
  network, params, observation = lstm_network
  first = np.zeros((LSTM_T, B), bool)
  first[RESET_AT, :] = True  # every environment starts an episode at t = RESET_AT
  output, final_state = network.apply(params, observation, first,
                                      _random_core_state(network, B, seed=1))

  # The same episode seen from its start, from a different (arbitrary) prior state.
  fresh_first = np.zeros((LSTM_T - RESET_AT, B), bool)
  fresh_first[0] = True
  fresh_output, fresh_final_state = network.apply(params, observation[RESET_AT:], fresh_first,
                                                  _random_core_state(network, B, seed=2))

  # Time axis: steps RESET_AT.. of the long sequence equal steps 0.. of the fresh one.
  np.testing.assert_allclose(output.policy.logits[RESET_AT:], fresh_output.policy.logits,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(output.value[RESET_AT:], fresh_output.value, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(final_state, fresh_final_state, rtol=1e-5, atol=1e-6)

  # And equal a fresh sequence from the zero state without any reset flag.
  zero_output, _ = network.apply(params, observation[RESET_AT:], np.zeros_like(fresh_first),
                                 network.initial_state(B))
  np.testing.assert_allclose(output.value[RESET_AT:], zero_output.value, rtol=1e-5, atol=1e-6)


def test_lstm_without_reset_carries_state(lstm_network):
  network, params, observation = lstm_network
  no_reset = np.zeros((LSTM_T, B), bool)
  output, _ = network.apply(params, observation, no_reset, _random_core_state(network, B, 1))
  fresh_first = np.zeros((LSTM_T - RESET_AT, B), bool)
  fresh_first[0] = True
  fresh_output, _ = network.apply(params, observation[RESET_AT:], fresh_first,
                                  network.initial_state(B))
  # Time axis: with no reset, step RESET_AT still depends on steps 0..RESET_AT-1.
  assert np.all(np.abs(output.value[RESET_AT] - fresh_output.value[0]) > 1e-6)

  # The incoming core state matters at t = 0 unless first[0] says the episode starts there.
  other, _ = network.apply(params, observation, no_reset, _random_core_state(network, B, 2))
  assert np.all(np.abs(output.value[0] - other.value[0]) > 1e-6)
  reset_first = no_reset.copy()
  reset_first[0] = True
  a, _ = network.apply(params, observation, reset_first, _random_core_state(network, B, 1))
  b, _ = network.apply(params, observation, reset_first, _random_core_state(network, B, 2))
  np.testing.assert_allclose(a.value, b.value, rtol=1e-6)


def test_lstm_reset_is_per_environment(lstm_network):
  network, params, observation = lstm_network
  core_state = _random_core_state(network, B, seed=1)
  first = np.zeros((LSTM_T, B), bool)
  output, _ = network.apply(params, observation, first, core_state)
  first[RESET_AT, 0] = True  # only environment 0 starts an episode
  reset_output, _ = network.apply(params, observation, first, core_state)
  # Batch axis: environment 0 changes from RESET_AT on, the others not at all.
  assert np.all(np.abs(reset_output.value[RESET_AT:, 0] - output.value[RESET_AT:, 0]) > 1e-6)
  np.testing.assert_array_equal(reset_output.value[:RESET_AT], output.value[:RESET_AT])
  np.testing.assert_array_equal(reset_output.value[:, 1:], output.value[:, 1:])


@pytest.mark.parametrize("torso,use_lstm", [("mlp", True), ("shallow", True),
                                            ("shallow", False)])
def test_unroll_equals_stepping(torso, use_lstm):
  """The learner's unroll over T gives what the inference server computed one step at a time."""
  time_steps = 5
  network = networks.ImpalaNetwork(torso=torso, num_actions=NUM_ACTIONS, use_lstm=use_lstm,
                                   lstm_size=16)
  observation = _observation(torso, time_steps, B, seed=3)
  rng = np.random.default_rng(4)
  first = rng.random((time_steps, B)) < 0.3  # episode starts scattered over [T, B]
  first[2, 1] = True
  initial_state = (_random_core_state(network, B, seed=5) if use_lstm else ())
  params = network.init(jax.random.PRNGKey(0), observation, first, initial_state)

  unrolled, unrolled_state = jax.jit(network.apply)(params, observation, first, initial_state)
  chex.assert_tree_all_finite((unrolled, unrolled_state))

  step = jax.jit(network.apply)
  state = initial_state
  for t in range(time_steps):  # time axis, one step at a time as T=1 calls
    stepped, state = step(params, observation[t:t + 1], first[t:t + 1], state)
    np.testing.assert_allclose(stepped.policy.logits[0], unrolled.policy.logits[t],
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stepped.value[0], unrolled.value[t], rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(state, unrolled_state, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# jit, uint8 input, and where the torso runs.


def test_uint8_under_jit_traces_once():
  network = networks.ImpalaNetwork(torso="shallow", num_actions=NUM_ACTIONS)
  observation = _observation("shallow", 1, B)
  first = np.ones((1, B), bool)
  params = network.init(jax.random.PRNGKey(0), observation, first, ())

  chex.clear_trace_counter()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def policy_step(params, observation, first):
    output, _ = network.apply(params, observation, first, ())
    return output

  for seed in range(3):  # same shapes and dtypes, new values: no retrace
    observation = _observation("shallow", 1, B, seed=seed)
    assert observation.dtype == np.uint8
    output = policy_step(params, observation, first)
    chex.assert_shape(output.value, (1, B))
    chex.assert_type(output.value, jnp.float32)

  # The network scales uint8 pixels by 1/255 itself: float frames in [0, 1] give the same.
  float_output, _ = network.apply(params, observation.astype(np.float32) / 255.0, first, ())
  np.testing.assert_allclose(output.value, float_output.value, rtol=1e-5, atol=1e-6)


def _primitives_inside_loops(jaxpr, inside_loop=False):
  """Names of primitives that run inside a scan or while loop, searching nested jaxprs."""
  found = set()
  for eqn in jaxpr.eqns:
    if inside_loop:
      found.add(eqn.primitive.name)
    in_loop = inside_loop or eqn.primitive.name in ("scan", "while")
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        sub = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
        if hasattr(sub, "eqns"):
          found |= _primitives_inside_loops(sub, in_loop)
  return found


def test_torso_runs_outside_the_time_scan():
  """Convolutions must not sit inside the LSTM's scan: ~17× slower on XLA:CPU (jax#12868)."""
  network = networks.ImpalaNetwork(torso="shallow", num_actions=NUM_ACTIONS, use_lstm=True,
                                   lstm_size=16)
  observation = _observation("shallow", T, B)
  first = np.zeros((T, B), bool)
  state = network.initial_state(B)
  params = _abstract_params(network, IMAGE_SHAPE, jnp.uint8)
  jaxpr = jax.make_jaxpr(network.apply)(params, observation, first, state).jaxpr
  in_loops = _primitives_inside_loops(jaxpr)
  assert "dot_general" in in_loops  # the LSTM is scanned ...
  assert "conv_general_dilated" not in in_loops  # ... the torso is not.


# ---------------------------------------------------------------------------------------------
# Configuration errors.


@pytest.mark.parametrize("kwargs,message", [
    ({"torso": "deep"}, "exactly one of num_actions"),
    ({"torso": "deep", "num_actions": 4, "action_dim": 2}, "exactly one of num_actions"),
    ({"torso": "resnet50", "num_actions": 4}, "accepted: shallow, nature, deep, mlp"),
    ({"torso": "deep", "num_actions": 0}, "num_actions must be >= 1"),
    ({"torso": "mlp", "action_dim": 0}, "action_dim must be >= 1"),
    ({"torso": "mlp", "num_actions": 2, "use_lstm": True, "lstm_size": 0}, "lstm_size"),
    ({"torso": "mlp", "num_actions": 2, "mlp_hidden_sizes": ()}, "mlp_hidden_sizes"),
    ({"torso": "mlp", "num_actions": 2, "num_tasks": 0}, "num_tasks must be >= 1 or None"),
])
def test_invalid_network_raises(kwargs, message):
  with pytest.raises(ValueError, match=message):
    networks.ImpalaNetwork(**kwargs)


def test_make_network():
  network_config = config_lib.NetworkConfig(torso="mlp", use_lstm=True, lstm_size=8,
                                            mlp_hidden_sizes=(16, 16))
  network = networks.make_network(network_config, action_dim=3)
  assert network == networks.ImpalaNetwork(torso="mlp", action_dim=3, use_lstm=True,
                                           lstm_size=8, mlp_hidden_sizes=(16, 16))
  with pytest.raises(ValueError, match="exactly one of num_actions"):
    networks.make_network(network_config)
  with pytest.raises(ValueError, match="exactly one of num_actions"):
    networks.make_network(network_config, num_actions=2, action_dim=3)


@pytest.mark.parametrize("torso", ["shallow", "mlp"])
def test_popart_value_head_has_one_output_per_task(torso):
  """PopArt's head: `[T, B, K]` values from one `[F, K]` linear layer; with one task its
  parameters are the plain head's, shape for shape and (same seed) value for value."""
  observation, first = _observation(torso, T, B), np.zeros((T, B), bool)
  plain = networks.ImpalaNetwork(torso=torso, num_actions=NUM_ACTIONS)
  per_task = networks.ImpalaNetwork(torso=torso, num_actions=NUM_ACTIONS, num_tasks=3)
  params = per_task.init(jax.random.PRNGKey(0), observation, first, ())
  output, _ = per_task.apply(params, observation, first, ())
  chex.assert_shape(output.value, (T, B, 3))
  linear = networks.value_linear(params)
  assert linear["kernel"].shape[-1] == 3 and linear["bias"].shape == (3,)
  # Every output is that layer's: scaling it scales the values.
  doubled = networks.with_value_linear(params, jax.tree.map(lambda x: 2 * x, linear))
  np.testing.assert_allclose(per_task.apply(doubled, observation, first, ())[0].value,
                             2 * output.value, rtol=1e-5, atol=1e-6)
  one_task = networks.ImpalaNetwork(torso=torso, num_actions=NUM_ACTIONS, num_tasks=1)
  plain_params = plain.init(jax.random.PRNGKey(0), observation, first, ())
  one_params = one_task.init(jax.random.PRNGKey(0), observation, first, ())
  chex.assert_trees_all_equal(one_params, plain_params)
  plain_value = plain.apply(plain_params, observation, first, ())[0].value
  np.testing.assert_array_equal(one_task.apply(one_params, observation, first, ())[0].value,
                                plain_value[..., None])


def test_wrong_core_state_or_observation_raises():
  observation = _observation("mlp", T, B)
  first = np.zeros((T, B), bool)
  recurrent = networks.ImpalaNetwork(torso="mlp", num_actions=2, use_lstm=True, lstm_size=8)
  with pytest.raises(ValueError, match="core_state must be an LSTMState"):
    recurrent.init(jax.random.PRNGKey(0), observation, first, ())
  feed_forward = networks.ImpalaNetwork(torso="mlp", num_actions=2)
  with pytest.raises(ValueError, match=r"core_state must be \(\)"):
    feed_forward.init(jax.random.PRNGKey(0), observation, first, recurrent.initial_state(B))
  image = networks.ImpalaNetwork(torso="shallow", num_actions=2)
  with pytest.raises(ValueError, match="channel-first"):
    image.init(jax.random.PRNGKey(0), np.zeros((T, B, 84, 84), np.uint8), first, ())


@pytest.mark.parametrize("kernel_size, stride, height, dtype", [
    (8, 4, 84, jnp.uint8),   # The shallow torso's first layer on Atari frames.
    (4, 2, 20, jnp.float32),  # Its second layer.
    (4, 2, 21, jnp.float32),  # A height the stride does not divide: trailing row unused.
    (6, 3, 17, jnp.float32),
    (3, 1, 9, jnp.float32),  # The nature torso's third layer: 1×1 blocks, nine shifts.
])
def test_space_to_depth_conv_matches_nn_conv_values_and_gradients(kernel_size, stride, height,
                                                                  dtype):
  rng = np.random.default_rng(0)
  if dtype == jnp.uint8:
    x = jnp.asarray(rng.integers(0, 256, (3, height, height, 4)), jnp.uint8)
    scale = 1.0 / 255.0
  else:
    x = jnp.asarray(rng.normal(size=(3, height, height, 4)), jnp.float32)
    scale = 1.0
  fast = networks.SpaceToDepthConv(5, kernel_size, stride, input_scale=scale)
  plain = nn.Conv(5, (kernel_size, kernel_size), strides=(stride, stride), padding="VALID")
  params = fast.init(jax.random.PRNGKey(1), x)
  params = jax.tree.map(lambda p: p + 0.1, params)  # Non-zero bias.
  # Identical parameter structure: checkpoints and the plain network are interchangeable.
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(
      jnp.shape, plain.init(jax.random.PRNGKey(1), x.astype(jnp.float32)))
  x_float = x.astype(jnp.float32) * scale
  np.testing.assert_allclose(fast.apply(params, x), plain.apply(params, x_float),
                             rtol=1e-4, atol=1e-4)

  def loss(module, inputs):
    return lambda p: jnp.sum(jnp.sin(module.apply(p, inputs)))

  grads_fast = jax.grad(loss(fast, x))(params)
  grads_plain = jax.grad(loss(plain, x_float))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4),
               grads_fast, grads_plain)


@pytest.mark.parametrize("torso_class", [networks.ShallowTorso, networks.NatureTorso])
def test_conv_torsos_are_the_same_function_with_or_without_space_to_depth(torso_class):
  x = jnp.asarray(np.random.default_rng(2).integers(0, 256, (2, 4, 84, 84)), jnp.uint8)
  fast, plain = torso_class(True), torso_class(False)
  params = fast.init(jax.random.PRNGKey(0), x)
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(
      jnp.shape, plain.init(jax.random.PRNGKey(0), x))
  np.testing.assert_allclose(fast.apply(params, x), plain.apply(params, x), rtol=1e-4,
                             atol=1e-5)


def test_nature_torso_is_the_dqn_network():
  """Mnih et al. 2015: 32·8×8/4, 64·4×4/2, 64·3×3/1, FC 512 (on 84×84: a 7×7×64 map)."""
  x = np.zeros((1, 4, 84, 84), np.uint8)
  params = networks.NatureTorso().init(jax.random.PRNGKey(0), x)["params"]
  shapes = {name: layer["kernel"].shape for name, layer in params.items()}
  assert shapes == {"Conv_0": (8, 8, 4, 32), "Conv_1": (4, 4, 32, 64),
                    "Conv_2": (3, 3, 64, 64), "Dense_0": (7 * 7 * 64, 512)}
  assert networks.NatureTorso().apply({"params": params}, x).shape == (1, 512)
