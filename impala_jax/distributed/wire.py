"""The wire format: a small versioned header plus raw array buffers, checked before use.

Everything that crosses a network (remote environment hosts, the Redis trajectory store) is
one of these messages. Nothing received is ever unpickled or evaluated: a message is bytes,
parsed with `struct` and `numpy.frombuffer`, and every array is checked against the schema
the receiver expects (name, dtype, shape, byte size) before anything reads it.

Layout (little-endian):

    header   magic b"IJAX" | version u16 | kind u16 | sequence u64 | array count u16
    arrays   per array: dtype code u8 | rank u8 | dims u32 × rank | byte size u64
    buffers  the arrays' bytes, in order, C-contiguous, no padding

A schema is a tuple of `ArraySpec(name, dtype, shape)`; a shape entry of None is the batch
dimension, whose size is checked to be equal across the arrays that have one and at most the
receiver's `max_batch`. The kind says which schema applies; the receiver decides which kinds
it accepts.
"""

import struct
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

import numpy as np

MAGIC = b"IJAX"
VERSION = 1

_HEADER = struct.Struct("<4sHHQH")
_ARRAY = struct.Struct("<BB")
_DIM = struct.Struct("<I")
_NBYTES = struct.Struct("<Q")

# The dtypes that may cross the wire, by code. Object and void dtypes never do.
DTYPES = (np.dtype(np.bool_), np.dtype(np.uint8), np.dtype(np.int32), np.dtype(np.int64),
          np.dtype(np.float32), np.dtype(np.float64))
_CODE = {dtype: code for code, dtype in enumerate(DTYPES)}
MAX_RANK = 8


class WireError(ValueError):
  """A message that does not match what the receiver expects; the text says what and why."""


class ArraySpec(NamedTuple):
  """One array of a message: its name, dtype and shape (None: the batch dimension)."""

  name: str
  dtype: np.dtype
  shape: Tuple[Optional[int], ...]


class Message(NamedTuple):
  kind: int
  sequence: int
  arrays: Dict[str, np.ndarray]


def max_message_bytes(schema: Sequence[ArraySpec], max_batch: int) -> int:
  """The largest message of `schema` with a batch of at most `max_batch` (for gRPC limits)."""
  total = _HEADER.size
  for spec in schema:
    elements = 1
    for dim in spec.shape:
      elements *= max_batch if dim is None else dim
    total += _ARRAY.size + _DIM.size * len(spec.shape) + _NBYTES.size
    total += elements * np.dtype(spec.dtype).itemsize
  return total


def encode(kind: int, sequence: int, schema: Sequence[ArraySpec],
           arrays: Dict[str, np.ndarray]) -> bytes:
  """Serialises `arrays` (one per schema entry, cast to its dtype) into one message."""
  values = [np.ascontiguousarray(arrays[spec.name], dtype=spec.dtype) for spec in schema]
  parts = [_HEADER.pack(MAGIC, VERSION, kind, sequence, len(values))]
  for value in values:
    parts.append(_ARRAY.pack(_CODE[value.dtype], value.ndim))
    parts.extend(_DIM.pack(dim) for dim in value.shape)
    parts.append(_NBYTES.pack(value.nbytes))
  parts.extend(value.tobytes() for value in values)
  return b"".join(parts)


def peek(payload: bytes) -> Tuple[int, int]:
  """(kind, sequence) of a message, after checking its magic and version only."""
  if len(payload) < _HEADER.size:
    raise WireError(f"A message of {len(payload)} bytes is shorter than the "
                    f"{_HEADER.size}-byte header.")
  magic, version, kind, sequence, _ = _HEADER.unpack_from(payload)
  if magic != MAGIC:
    raise WireError(f"Not an impala_jax message (magic {magic!r}, expected {MAGIC!r}).")
  if version != VERSION:
    raise WireError(f"Wire format version {version}; this side speaks version {VERSION}.")
  return kind, sequence


def decode(payload: bytes, schema: Sequence[ArraySpec], max_batch: int) -> Message:
  """Parses and checks a message against `schema`; raises WireError on any mismatch.

  The returned arrays are read-only views into `payload` (no copy).
  """
  kind, sequence = peek(payload)
  _, _, _, _, count = _HEADER.unpack_from(payload)
  if count != len(schema):
    raise WireError(f"The message holds {count} arrays; expected {len(schema)} "
                    f"({', '.join(s.name for s in schema)}).")
  offset = _HEADER.size
  layouts = []
  for spec in schema:
    shape, nbytes, offset = _read_layout(payload, offset, spec)
    layouts.append((spec, shape, nbytes))
  _check_batch(layouts, max_batch)
  arrays = {}
  for spec, shape, nbytes in layouts:
    if offset + nbytes > len(payload):
      raise WireError(f"The message is truncated: {spec.name!r} needs {nbytes} bytes at "
                      f"offset {offset}, only {len(payload) - offset} remain.")
    if np.dtype(spec.dtype) == np.bool_:
      _check_bool_bytes(payload, offset, _count(shape), spec.name)
    arrays[spec.name] = np.frombuffer(payload, np.dtype(spec.dtype), _count(shape),
                                      offset).reshape(shape)
    offset += nbytes
  if offset != len(payload):
    raise WireError(f"{len(payload) - offset} unexpected bytes after the last array.")
  return Message(kind, sequence, arrays)


def _check_bool_bytes(payload: bytes, offset: int, count: int, name: str) -> None:
  """A bool is one byte, 0 or 1. NumPy reads any other byte as True and XLA does not (a byte 2
  gives 0 from a jitted `jnp.where(x, 1, 0)` and counts 2 in `sum`), so the actors and the
  learner would disagree on, say, where an episode ends."""
  raw = np.frombuffer(payload, np.uint8, count, offset)
  if count and raw.max() > 1:
    raise WireError(f"{name!r} holds byte value {int(raw.max())}; a bool must be 0 or 1.")


def _count(shape: Tuple[int, ...]) -> int:
  count = 1
  for dim in shape:
    count *= dim
  return count


def _read_layout(payload: bytes, offset: int, spec: ArraySpec):
  """Reads and checks one array's dtype, shape and size; returns (shape, nbytes, offset)."""
  if offset + _ARRAY.size > len(payload):
    raise WireError(f"The message is truncated in the layout of {spec.name!r}.")
  code, rank = _ARRAY.unpack_from(payload, offset)
  offset += _ARRAY.size
  expected = np.dtype(spec.dtype)
  if code >= len(DTYPES) or DTYPES[code] != expected:
    got = DTYPES[code].name if code < len(DTYPES) else f"unknown code {code}"
    raise WireError(f"{spec.name!r} has dtype {got}; expected {expected.name}.")
  if rank != len(spec.shape):
    raise WireError(f"{spec.name!r} has rank {rank}; expected {len(spec.shape)} "
                    f"(shape {_shape_text(spec.shape)}).")
  if offset + rank * _DIM.size + _NBYTES.size > len(payload):
    raise WireError(f"The message is truncated in the layout of {spec.name!r}.")
  shape = tuple(_DIM.unpack_from(payload, offset + i * _DIM.size)[0] for i in range(rank))
  offset += rank * _DIM.size
  (nbytes,) = _NBYTES.unpack_from(payload, offset)
  offset += _NBYTES.size
  for dim, want in zip(shape, spec.shape):
    if want is not None and dim != want:
      raise WireError(f"{spec.name!r} has shape {shape}; expected {_shape_text(spec.shape)}.")
  if nbytes != _count(shape) * expected.itemsize:
    raise WireError(f"{spec.name!r} declares {nbytes} bytes; shape {shape} of "
                    f"{expected.name} needs {_count(shape) * expected.itemsize}.")
  return shape, nbytes, offset


def _check_batch(layouts, max_batch: int) -> None:
  sizes = {shape[spec.shape.index(None)] for spec, shape, _ in layouts if None in spec.shape}
  if len(sizes) > 1:
    raise WireError(f"The arrays disagree on the batch size: {sorted(sizes)}.")
  if sizes and not 1 <= next(iter(sizes)) <= max_batch:
    raise WireError(f"Batch size {next(iter(sizes))} is outside [1, {max_batch}].")


def _shape_text(shape: Tuple[Optional[int], ...]) -> str:
  return "(" + ", ".join("batch" if d is None else str(d) for d in shape) + ")"
