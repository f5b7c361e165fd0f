"""Shared secrets: from a file only it can read, or the environment; compared in constant time."""

import os

import pytest

from impala_jax.distributed import auth

SECRET = "a-secret-of-more-than-16-chars"


def _file(tmp_path, mode, text=SECRET):
  path = tmp_path / "secret"
  path.write_text(text + "\n")
  os.chmod(path, mode)
  return str(path)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602])
def test_a_secret_file_open_to_other_users_is_refused_with_the_fix(tmp_path, mode):
  path = _file(tmp_path, mode)
  with pytest.raises(ValueError, match=f"has mode {mode:o}.*Run `chmod 600 {path}`"):
    auth.read_secret(path, "UNUSED_ENV_VAR")


def test_a_private_secret_file_is_read_and_the_environment_is_the_fallback(tmp_path,
                                                                           monkeypatch):
  assert auth.read_secret(_file(tmp_path, 0o600), "UNUSED_ENV_VAR") == SECRET
  assert auth.read_secret(_file(tmp_path, 0o400), "UNUSED_ENV_VAR") == SECRET
  monkeypatch.setenv("A_TEST_SECRET", SECRET)
  assert auth.read_secret(None, "A_TEST_SECRET") == SECRET
  monkeypatch.delenv("A_TEST_SECRET")
  assert auth.read_secret(None, "A_TEST_SECRET") is None
  with pytest.raises(ValueError, match="does not exist"):
    auth.read_secret(str(tmp_path / "missing"), "A_TEST_SECRET")


def test_secrets_compare_only_when_equal():
  assert auth.same_secret(SECRET, SECRET)
  assert not auth.same_secret(SECRET[:-1] + "x", SECRET)
  assert not auth.same_secret(None, SECRET)
