"""Which flag sets which config field: the one table between `experiments/common.py`'s flags and
`impala_jax/config.py`'s frozen configs.

  * Every default is the config's own (`default`); a script may choose another for its flag
    (`common.define_flags(defaults)`), never restate the config's.
  * `FIELD_FLAGS` names the flag of every config field that has one, and `NOT_FLAGS` every field
    that has none, with the reason; tests/experiments/test_config_flags.py fails on a field in
    neither, so a new config field cannot be forgotten here.
  * `build(cls)` makes a config from the parsed flags through the table.
  * "Off" is None in both: the flag of an Optional field is unset (None) by default, as the
    config's field is. The one exception is `--max_grad_norm`, on by default: a float flag can't
    be unset again on a command line, so 0 turns it off (`_OFF_AT_ZERO`).
"""

import dataclasses
from typing import Any, Dict, Type

from absl import flags

from impala_jax import config as config_lib

FIELD_FLAGS: Dict[type, Dict[str, str]] = {
    config_lib.EnvConfig: dict(
        env_id="env", num_envs="num_envs", batch_size="env_batch_size",
        num_threads="env_threads", seed="seed", max_episode_steps="max_episode_steps",
        image_size="image_size", reward_clip="reward_clip"),
    config_lib.NetworkConfig: dict(
        torso="network", use_lstm="use_lstm", lstm_size="lstm_size",
        mlp_hidden_sizes="mlp_hidden_sizes"),
    config_lib.LossConfig: dict(
        objective="objective", discount="discount", baseline_cost="baseline_cost",
        entropy_cost="entropy_cost", clip_rho_threshold="clip_rho_threshold",
        clip_c_threshold="clip_c_threshold", clip_pg_rho_threshold="clip_pg_rho_threshold",
        lambda_="vtrace_lambda", reduction="loss_reduction", clip_epsilon="clip_epsilon",
        normalize_advantages="normalize_advantages", ppo_ratio="ppo_ratio",
        correction="correction"),
    config_lib.PopArtConfig: dict(
        enabled="popart", step_size="popart_step_size", scale_lb="popart_scale_lb",
        scale_ub="popart_scale_ub"),
    config_lib.OptimizerConfig: dict(
        optimizer="optimizer", learning_rate="learning_rate", rmsprop_decay="rmsprop_decay",
        rmsprop_momentum="rmsprop_momentum", rmsprop_epsilon="rmsprop_epsilon",
        rmsprop_eps_in_sqrt="rmsprop_eps_in_sqrt", adam_epsilon="adam_epsilon",
        max_grad_norm="max_grad_norm", anneal_learning_rate="anneal_learning_rate",
        anneal_env_steps="anneal_env_steps"),
    config_lib.ValueLimits: dict(
        max_abs_reward="max_abs_reward", max_abs_value="max_abs_value",
        violations_to_evict="violations_to_evict"),
    config_lib.RemoteEnvConfig: dict(
        listen="listen", token_file="token_file", max_envs="remote_max_envs",
        max_envs_per_host="remote_max_envs_per_host", max_hosts="max_hosts",
        lease_seconds="host_lease_seconds", hello_timeout_seconds="hello_timeout_seconds",
        tls_cert_file="tls_cert_file", tls_key_file="tls_key_file",
        insecure_listen="insecure_listen"),
    config_lib.TrajectoryStoreConfig: dict(
        url="trajectory_store", username="redis_username", password_file="redis_password_file",
        tls_ca_file="redis_tls_ca_file", tls_cert_file="redis_tls_cert_file",
        tls_key_file="redis_tls_key_file", insecure_redis="insecure_redis",
        key_prefix="redis_key_prefix", capacity="store_capacity",
        max_policy_lag="max_policy_lag",
        publish_interval_seconds="params_publish_interval_seconds"),
    config_lib.MultiHostConfig: dict(
        coordinator_address="coordinator_address", num_processes="num_processes",
        process_id="process_id",
        initialization_timeout_seconds="initialization_timeout_seconds",
        heartbeat_timeout_seconds="heartbeat_timeout_seconds",
        stall_timeout_seconds="stall_timeout_seconds",
        coordinator_bind_address="coordinator_bind_address"),
    config_lib.TrainConfig: dict(
        num_actor_threads="num_actor_threads", unroll_length="unroll_length",
        batch_size="batch_size", num_epochs="num_epochs", num_minibatches="num_minibatches",
        queue_capacity="queue_capacity", inference_batch_wait_ms="inference_batch_wait_ms",
        total_env_steps="total_env_steps", stop_at_score="stop_at_score", seed="seed",
        logdir="logdir", resume="resume",
        checkpoint_interval_minutes="checkpoint_interval_minutes",
        log_interval_seconds="log_interval_seconds",
        max_batch_wait_minutes="max_batch_wait_minutes",
        publish_delay_updates="publish_delay_updates"),
}

_ATARI_PROTOCOL = ("the paper's Atari protocol (Table G.1); evaluation sets its own "
                   "(evaluation.episodes)")
_NESTED = "a config of its own, built from its own flags"
NOT_FLAGS: Dict[type, Dict[str, str]] = {
    config_lib.EnvConfig: dict(
        episodic_life=_ATARI_PROTOCOL, noop_max=_ATARI_PROTOCOL,
        stack_num=_ATARI_PROTOCOL, frame_skip=_ATARI_PROTOCOL,
        repeat_action_probability=_ATARI_PROTOCOL,
        full_action_space=("set for every game of a multi-task run (EnvConfig.task_config), "
                           "from --env's list of games")),
    config_lib.PopArtConfig: dict(
        num_tasks="the number of games in --env (common.config_from_flags)"),
    config_lib.TrainConfig: dict(
        env=_NESTED, network=_NESTED, loss=_NESTED, optimizer=_NESTED, popart=_NESTED,
        value_limits=_NESTED,
        remote_envs=_NESTED + " (None unless --listen)",
        trajectory_store=_NESTED + " (None unless --trajectory_store)",
        multihost=_NESTED + " (None unless --num_processes > 1)"),
}

# Optional fields whose flag is on by default, so that 0 is their "off" (module doc).
_OFF_AT_ZERO = {(config_lib.OptimizerConfig, "max_grad_norm")}


def default(cls: Type[Any], field: str) -> Any:
  """The config's default for `cls.field` (a flag's default unless its script sets another)."""
  for f in dataclasses.fields(cls):
    if f.name == field:
      if f.default is not dataclasses.MISSING:
        return f.default
      raise ValueError(f"{cls.__name__}.{field} has no default.")
  raise ValueError(f"{cls.__name__} has no field {field!r}.")


def _value(cls: Type[Any], field: str, flag: str) -> Any:
  value = flags.FLAGS[flag].value
  if (cls, field) in _OFF_AT_ZERO and value is not None and value <= 0:
    return None
  if isinstance(value, list):  # List flags hold strings; the configs hold tuples of ints.
    return tuple(int(v) for v in value)
  return value


def build(cls: Type[Any], **given: Any) -> Any:
  """`cls` from the parsed flags of its fields (`FIELD_FLAGS[cls]`), `given` for the rest."""
  values = {field: _value(cls, field, flag) for field, flag in FIELD_FLAGS[cls].items()}
  values.update(given)
  return cls(**values)
