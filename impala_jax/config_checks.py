"""Checks shared by the configuration modules (`config`, `config_learning`, `config_scale_out`)."""

import ipaddress


def check_one_of(kind: str, value, accepted) -> None:
  """Raises ValueError naming `value` and every accepted name of `kind`, unless it is one: the
  one wording of every unknown-name error."""
  if value not in accepted:
    raise ValueError(f"Unknown {kind} {value!r}; accepted: {', '.join(accepted)}.")


def require(condition: bool, message: str) -> None:
  """Raises ValueError(message) unless `condition`: every config check's one way to fail."""
  if not condition:
    raise ValueError(message)


def is_loopback(host: str) -> bool:
  """Whether `host` (a name or an address, IPv6 in brackets or not) is this machine only."""
  host = host.strip("[]")
  if host == "localhost":
    return True
  try:
    return ipaddress.ip_address(host).is_loopback
  except ValueError:
    return False  # A host name: it may resolve to any interface.
