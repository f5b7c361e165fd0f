"""The wire format: round trips, and every kind of bad message rejected with a clear reason."""

import numpy as np
import pytest

from impala_jax.distributed import wire

SCHEMA = (
    wire.ArraySpec("ids", np.int32, (None,)),
    wire.ArraySpec("frames", np.uint8, (None, 4, 3)),
    wire.ArraySpec("flag", np.bool_, (2,)),
)


def _arrays(batch=5, seed=0):
  rng = np.random.default_rng(seed)
  return dict(ids=rng.integers(0, 100, batch), frames=rng.integers(0, 256, (batch, 4, 3)),
              flag=[True, False])


def test_round_trip_keeps_values_dtypes_kind_and_sequence():
  arrays = _arrays()
  message = wire.decode(wire.encode(7, 123456789012, SCHEMA, arrays), SCHEMA, max_batch=8)
  assert (message.kind, message.sequence) == (7, 123456789012)
  for spec in SCHEMA:
    got = message.arrays[spec.name]
    assert got.dtype == spec.dtype
    np.testing.assert_array_equal(got, np.asarray(arrays[spec.name], spec.dtype))
    assert not got.flags.writeable  # Views into the received bytes, never copied in place.


def test_max_message_bytes_bounds_the_largest_batch():
  payload = wire.encode(1, 0, SCHEMA, _arrays(batch=8))
  assert len(payload) == wire.max_message_bytes(SCHEMA, max_batch=8)


def _other_schema(**changes):
  return tuple(spec._replace(**changes) if spec.name == "frames" else spec for spec in SCHEMA)


@pytest.mark.parametrize("mutate, message", [
    (lambda p: b"XXXX" + p[4:], "Not an impala_jax message"),
    (lambda p: p[:4] + (99).to_bytes(2, "little") + p[6:], "Wire format version 99"),
    (lambda p: p[:10], "shorter than the 18-byte header"),
    (lambda p: p[:-1], "truncated"),
    (lambda p: p + b"\0", "1 unexpected bytes after the last array"),
])
def test_corrupted_messages_are_rejected(mutate, message):
  payload = mutate(wire.encode(1, 0, SCHEMA, _arrays()))
  with pytest.raises(wire.WireError, match=message):
    wire.decode(payload, SCHEMA, max_batch=8)


@pytest.mark.parametrize("sent_schema, message", [
    (_other_schema(dtype=np.float32), "'frames' has dtype float32; expected uint8"),
    (_other_schema(shape=(None, 4, 2)),
     r"'frames' has shape \(5, 4, 2\); expected \(batch, 4, 3\)"),
    (_other_schema(shape=(None, 12)), "'frames' has rank 2; expected 3"),
    (SCHEMA[:2], "holds 2 arrays; expected 3"),
])
def test_schema_mismatches_name_the_array_and_what_was_expected(sent_schema, message):
  arrays = _arrays()
  if sent_schema[1].shape == (None, 4, 2):
    arrays["frames"] = arrays["frames"][:, :, :2]
  if sent_schema[1].shape == (None, 12):
    arrays["frames"] = arrays["frames"].reshape(5, 12)
  with pytest.raises(wire.WireError, match=message):
    wire.decode(wire.encode(1, 0, sent_schema, arrays), SCHEMA, max_batch=8)


def test_batch_size_is_bounded_and_shared():
  with pytest.raises(wire.WireError, match=r"Batch size 5 is outside \[1, 4\]"):
    wire.decode(wire.encode(1, 0, SCHEMA, _arrays(batch=5)), SCHEMA, max_batch=4)
  arrays = _arrays(batch=5)
  arrays["ids"] = arrays["ids"][:3]
  with pytest.raises(wire.WireError, match=r"disagree on the batch size: \[3, 5\]"):
    wire.decode(wire.encode(1, 0, SCHEMA, arrays), SCHEMA, max_batch=8)


def test_a_lying_byte_count_is_rejected():
  payload = bytearray(wire.encode(1, 0, SCHEMA, _arrays()))
  # The first array's byte count follows the header, its dtype code, rank and dim (18 + 2 + 4).
  payload[24:32] = (999).to_bytes(8, "little")
  with pytest.raises(wire.WireError, match="'ids' declares 999 bytes"):
    wire.decode(bytes(payload), SCHEMA, max_batch=8)


def test_random_and_mutated_bytes_only_ever_raise_wire_errors():
  rng = np.random.default_rng(1)
  valid = wire.encode(1, 0, SCHEMA, _arrays())
  for trial in range(3000):
    if trial % 2:
      payload = rng.integers(0, 256, rng.integers(0, 200)).astype(np.uint8).tobytes()
    else:  # A valid message with a few bytes flipped: reaches the deeper checks.
      payload = bytearray(valid)
      for index in rng.integers(0, len(payload), rng.integers(1, 4)):
        payload[index] = rng.integers(0, 256)
      payload = bytes(payload)
    try:
      message = wire.decode(payload, SCHEMA, max_batch=8)
    except wire.WireError:
      continue
    # What passes is well formed: the schema's dtypes and shapes.
    for spec in SCHEMA:
      assert message.arrays[spec.name].dtype == spec.dtype


def test_bool_bytes_other_than_0_and_1_are_rejected():
  payload = bytearray(wire.encode(1, 0, SCHEMA, _arrays()))
  # The last array is the two-byte `flag`, at the very end of the message.
  payload[-2] = 2
  with pytest.raises(wire.WireError, match="'flag' holds byte value 2; a bool must be 0 or 1"):
    wire.decode(bytes(payload), SCHEMA, max_batch=8)
