"""Message framing between Blender and the worker process, shared by both ends.

Blender's Python and the worker's Python may be different interpreters with
different numpy versions, so nothing is pickled: a message is a JSON header
plus zero or more raw array payloads, sent over the worker's binary stdin and
stdout pipes. One frame on the wire::

    b"CLBW" | header length (uint32, little-endian) | header (UTF-8 JSON) | payload 0 | payload 1 | ...

The header is ``{"v": 1, "type": str, "job": str | None, "fields": {...},
"arrays": [{"name": str, "dtype": "<f4", "shape": [..], "nbytes": int}, ...]}``
and the payloads are the arrays' C-contiguous little-endian bytes, in the order
the header lists them. Only bool, integer, float and complex dtypes travel as
arrays; everything else goes in ``fields`` as JSON.

Message types, client -> worker: ``run`` (fields ``name``, ``params``),
``cancel``, ``shutdown``. Worker -> client: ``ready`` (pid, versions),
``started``, ``progress`` (``fraction``, ``stage``), ``result``, ``error``
(``message``, ``hint``, ``kind``, ``traceback``, ``user``), ``cancelled``.
"""

from __future__ import annotations

import json
import math
import struct
import threading
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np

PROTOCOL_VERSION = 1
MAGIC = b"CLBW"
_PREFIX = struct.Struct("<4sI")
MAX_HEADER_BYTES = 16 * 1024 * 1024
_ARRAY_KINDS = frozenset("biufc")

# Client -> worker.
RUN, CANCEL, SHUTDOWN = "run", "cancel", "shutdown"
# Worker -> client.
READY, STARTED, PROGRESS, RESULT, ERROR, CANCELLED = (
    "ready", "started", "progress", "result", "error", "cancelled")


class ProtocolError(Exception):
    """The byte stream is not a valid message stream (corrupt or foreign output)."""


@dataclass
class Message:
    """One protocol message: a type, the job it is about, JSON fields and arrays."""

    type: str
    job: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def _json_default(value: Any) -> Any:
    """Turn numpy scalars and small arrays in ``fields`` into plain JSON values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if hasattr(value, "__fspath__"):
        return str(value)
    raise TypeError(f"cannot send a {type(value).__name__} in message fields")


def wire_array(array: Any) -> np.ndarray:
    """``array`` as a C-contiguous little-endian numpy array that may travel, or TypeError."""
    a = np.asarray(array)
    if a.dtype.kind not in _ARRAY_KINDS or a.dtype.fields is not None:
        raise TypeError(f"arrays of dtype {a.dtype} cannot be sent; "
                        "only bool, integer, float and complex arrays travel")
    little = a.dtype.newbyteorder("<")
    if a.dtype.itemsize > 1 and a.dtype != little:
        a = a.astype(little)
    # not np.ascontiguousarray: it turns 0-d arrays into 1-d ones
    return a if a.flags.c_contiguous else a.copy(order="C")


def encode_header(message: Message, arrays: dict[str, np.ndarray]) -> bytes:
    """The frame prefix and header of ``message`` whose arrays are already wire arrays."""
    header = {
        "v": PROTOCOL_VERSION,
        "type": message.type,
        "job": message.job,
        "fields": message.fields,
        "arrays": [
            {"name": name, "dtype": a.dtype.str, "shape": list(a.shape), "nbytes": int(a.nbytes)}
            for name, a in arrays.items()
        ],
    }
    data = json.dumps(header, default=_json_default, separators=(",", ":")).encode("utf-8")
    if len(data) > MAX_HEADER_BYTES:
        raise ValueError(f"message header of {len(data)} bytes is too large; send arrays instead")
    return _PREFIX.pack(MAGIC, len(data)) + data


def write_message(stream: BinaryIO, message: Message) -> None:
    """Write one message to a binary stream and flush it (not thread-safe: see MessageWriter)."""
    arrays = {str(name): wire_array(a) for name, a in message.arrays.items()}
    stream.write(encode_header(message, arrays))
    for a in arrays.values():
        if a.nbytes:
            stream.write(memoryview(a.reshape(-1).view(np.uint8)))
    stream.flush()


def _read_exact_into(stream: BinaryIO, buffer: memoryview) -> int:
    """Fill ``buffer`` from the stream; return how many bytes were read (short only at EOF)."""
    done = 0
    total = len(buffer)
    while done < total:
        n = stream.readinto(buffer[done:])
        if not n:
            break
        done += n
    return done


def _read_exact(stream: BinaryIO, n: int) -> bytearray | None:
    """Read exactly ``n`` bytes; None at a clean EOF before any byte, ProtocolError if cut short."""
    data = bytearray(n)
    got = _read_exact_into(stream, memoryview(data))
    if got == n:
        return data
    if got == 0:
        return None
    raise ProtocolError(f"stream ended inside a message ({got} of {n} bytes)")


def _array_from_spec(stream: BinaryIO, spec: dict) -> tuple[str, np.ndarray]:
    """Read the payload that ``spec`` (one header ``arrays`` entry) describes."""
    try:
        name = str(spec["name"])
        dtype = np.dtype(spec["dtype"])
        shape = tuple(int(s) for s in spec["shape"])
        nbytes = int(spec["nbytes"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"bad array description {spec!r}: {exc}") from None
    if dtype.kind not in _ARRAY_KINDS or dtype.fields is not None or min(shape, default=0) < 0:
        raise ProtocolError(f"bad array description {spec!r}")
    if nbytes != math.prod(shape) * dtype.itemsize:
        raise ProtocolError(f"array {name!r}: {nbytes} bytes do not match {dtype} {shape}")
    if nbytes == 0:
        return name, np.zeros(shape, dtype=dtype)
    buffer = _read_exact(stream, nbytes)
    if buffer is None:
        raise ProtocolError(f"stream ended before the payload of array {name!r}")
    return name, np.frombuffer(buffer, dtype=dtype).reshape(shape)


def read_message(stream: BinaryIO) -> Message | None:
    """Read one message; None at a clean end of stream; ProtocolError on anything malformed.

    Arrays come back writable and own their memory (one copy from the pipe, no more).
    """
    prefix = _read_exact(stream, _PREFIX.size)
    if prefix is None:
        return None
    magic, size = _PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise ProtocolError(f"expected a message, got bytes {bytes(prefix)!r} "
                            "(something else wrote to the protocol pipe)")
    if size > MAX_HEADER_BYTES:
        raise ProtocolError(f"message header of {size} bytes is too large")
    raw = _read_exact(stream, size)
    if raw is None:
        raise ProtocolError("stream ended before the message header")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"message header is not JSON: {exc}") from None
    if not isinstance(header, dict) or "type" not in header:
        raise ProtocolError("message header lacks a type")
    if header.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {header.get('v')!r}, expected {PROTOCOL_VERSION} "
                            "(the worker and the add-on come from different versions)")
    arrays = dict(_array_from_spec(stream, spec) for spec in header.get("arrays") or [])
    fields = header.get("fields") or {}
    job = header.get("job")
    return Message(str(header["type"]), None if job is None else str(job), fields, arrays)


class MessageWriter:
    """Thread-safe writer of whole messages to one binary stream."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self._lock = threading.Lock()

    def send(self, type: str, job: str | None = None, fields: dict | None = None,
             arrays: dict[str, np.ndarray] | None = None) -> None:
        """Send one message; raises OSError (e.g. BrokenPipeError) if the other end is gone."""
        message = Message(type, job, dict(fields or {}), dict(arrays or {}))
        with self._lock:
            write_message(self.stream, message)

    def close(self) -> None:
        with self._lock:
            try:
                self.stream.close()
            except OSError:
                pass
