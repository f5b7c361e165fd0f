"""Scale-out: the wire format, remote environment hosts over gRPC, shared secrets.

    wire.py           header + raw buffers, checked against a schema (never pickle)
    env_protocol.py   what env hosts and the inference server say (HELLO, STEP, ACTIONS)
    env_server.py     the learner host's gRPC service feeding the inference server
    host_sessions.py  per-host state on the learner host: slots, recorder, lease
    env_host.py       an environment host: EnvPool streaming to a learner
    auth.py           secrets from a file or the environment
"""
