"""Scale-out: remote environment hosts (gRPC), a Redis trajectory store, multi-host learners.

    wire.py             header + raw buffers, checked against a schema (never pickle)
    auth.py             secrets from a file or the environment
    learner_settings.py  the settings every host takes from its learner
    SEED-style environment hosts streaming to the central inference server (gRPC):
      env_protocol.py   what env hosts and the inference server say (HELLO, STEP, ACTIONS,
                        GOODBYE)
      env_server.py     the learner host's gRPC server: binding, TLS, the reaper
      env_service.py    its handlers: settings, handshake, checked steps → inference
      host_sessions.py  per-host state on the learner host: slots, recorder, lease, violations
      env_host.py       an environment host: EnvPool streaming to a learner
    Decoupled actor hosts and a Redis trajectory store:
      codecs.py         unrolls, parameters and episode scores as wire messages
      trajectory_store.py  the store: bounded unroll list, versioned parameters, learner lease
      actor_host.py     an actor host: local actors and a CPU copy of the policy
      store_learner.py  the learner's side: batches in, parameters out
      local_redis.py    a private redis-server on loopback, for one-machine runs and tests
    One data-parallel learner over several processes:
      multihost.py      jax.distributed set-up, collective stop, watchdog, settings check
"""
