"""Test certificates, made with the `openssl` command line (the venv has no `cryptography`).

A CA, a server certificate for localhost and 127.0.0.1 signed by it, and a client certificate
signed by it (for servers that verify their clients, as Redis does with TLS), all in PEM.
"""

import os
import subprocess
from typing import NamedTuple


class Certificates(NamedTuple):
  ca: str
  server_cert: str
  server_key: str
  client_cert: str
  client_key: str


def _openssl(*args: str, cwd: str) -> None:
  subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _signed(name: str, subject: str, extensions: str, directory: str) -> None:
  with open(os.path.join(directory, f"{name}.ext"), "w", encoding="utf-8") as f:
    f.write(extensions)
  _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-subj", subject,
           "-out", f"{name}.csr", cwd=directory)
  _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
           "-CAcreateserial", "-days", "2", "-sha256", "-extfile", f"{name}.ext",
           "-out", f"{name}.pem", cwd=directory)
  os.chmod(os.path.join(directory, f"{name}.key"), 0o600)


def make(directory: str) -> Certificates:
  """Writes the certificates and keys (mode 600) into `directory`."""
  _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-days", "2",
           "-subj", "/CN=impala_jax test CA", "-out", "ca.pem", cwd=directory)
  _signed("server", "/CN=localhost",
          "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
          directory)
  _signed("client", "/CN=impala_jax test client", "extendedKeyUsage=clientAuth\n", directory)
  path = lambda name: os.path.join(directory, name)
  return Certificates(path("ca.pem"), path("server.pem"), path("server.key"),
                      path("client.pem"), path("client.key"))
