"""The recording file format: an agent's stream, envelope by envelope, losslessly.

    b"SPYREC1\\n"                      magic and format version
    then, repeated: <u32 little-endian length> <serialized spyops.v1.Envelope>

Written by ``spyctl record``, read by the replay feed and ``spyctl detect/score/backtest``. A file cut
short (the recorder was killed mid-write) reads up to its last whole envelope; ``RecordingError``
says when a file is not a recording at all or is corrupt in the middle.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from google.protobuf.message import DecodeError

from proto.spyops.v1 import spyops_pb2 as pb

MAGIC = b"SPYREC1\n"
_LEN = struct.Struct("<I")
MAX_ENVELOPE = 256 * 1024 * 1024


class RecordingError(ValueError):
    """Not a recording, or a corrupt one; the message names the file and the offset."""


class RecordingWriter:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._f: BinaryIO = self.path.open("wb")
        self._f.write(MAGIC)
        self.count = 0

    def write_bytes(self, envelope: bytes) -> None:
        self._f.write(_LEN.pack(len(envelope)))
        self._f.write(envelope)
        self.count += 1

    def write(self, envelope: pb.Envelope) -> None:
        self.write_bytes(envelope.SerializeToString())

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_recording(path: str | Path) -> bool:
    with Path(path).open("rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def read_recording(path: str | Path) -> Iterator[pb.Envelope]:
    """Envelopes of a recording in order; a truncated last record is ignored."""
    for _offset, env in read_recording_from(path):
        yield env


def read_recording_from(path: str | Path, offset: int = 0) -> Iterator[tuple[int, pb.Envelope]]:
    """``(byte offset, envelope)`` of each record from ``offset`` (a record boundary, as yielded
    before; 0 for the start), so a player can seek back to a record. A truncated last record (a crash
    while writing) is ignored; a corrupt one raises :class:`RecordingError` naming its offset."""
    p = Path(path)
    with p.open("rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise RecordingError(f"{p} is not a spyops recording (made by `spyctl record`)")
        offset = max(offset, len(MAGIC))
        f.seek(offset)
        while True:
            head = f.read(_LEN.size)
            if len(head) < _LEN.size:
                return
            (n,) = _LEN.unpack(head)
            if n > MAX_ENVELOPE:
                raise RecordingError(f"{p}: corrupt record length {n} at byte {offset}")
            body = f.read(n)
            if len(body) < n:
                return  # cut short by a crash while writing: keep what is whole
            try:
                env = pb.Envelope.FromString(body)
            except DecodeError as exc:
                raise RecordingError(f"{p}: corrupt envelope at byte {offset}: {exc}") from None
            yield offset, env
            offset += _LEN.size + n
