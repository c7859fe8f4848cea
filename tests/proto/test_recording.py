"""The recording file format: round trip, a file cut short, garbage, corruption in the middle."""

from __future__ import annotations

from pathlib import Path

import pytest

from proto.recording import MAGIC, RecordingError, RecordingWriter, is_recording, read_recording
from proto.spyops.v1 import spyops_pb2 as pb


def write_recording(path: Path, n: int) -> list[bytes]:
    bodies = []
    with RecordingWriter(path) as w:
        for i in range(1, n + 1):
            env = pb.Envelope(agent_id="a", seq=i, ts_ns=1_700_000_000_000_000_000 + i)
            env.underlying.symbol, env.underlying.last = "SPY", 500.0 + i
            w.write(env)
            bodies.append(env.SerializeToString())
    return bodies


@pytest.mark.parametrize("cut", [1, 3, 4, 5, 10])
def test_truncated_recording_reads_whole_envelopes(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "cut.spyrec"
    bodies = write_recording(path, 5)
    data = path.read_bytes()
    path.write_bytes(data[:-cut])
    last_len = 4 + len(bodies[-1])
    envs = list(read_recording(path))
    assert [e.seq for e in envs] == ([1, 2, 3, 4] if cut <= last_len else [1, 2, 3])


def test_garbage_is_not_a_recording(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(bytes(range(256)) * 10)
    with pytest.raises(RecordingError, match="not a spyops recording"):
        list(read_recording(junk))


def test_corrupt_length_in_the_middle(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.spyrec"
    write_recording(path, 3)
    data = bytearray(path.read_bytes())
    first_len = int.from_bytes(data[len(MAGIC) : len(MAGIC) + 4], "little")
    second = len(MAGIC) + 4 + first_len
    data[second : second + 4] = b"\xff\xff\xff\x7f"
    path.write_bytes(bytes(data))
    with pytest.raises(RecordingError, match="corrupt record length"):
        list(read_recording(path))


def test_round_trip_keeps_every_envelope_byte_for_byte(tmp_path: Path) -> None:
    path = tmp_path / "ok.spyrec"
    bodies = write_recording(path, 50)
    assert is_recording(path)
    assert [e.SerializeToString() for e in read_recording(path)] == bodies


def test_empty_recording(tmp_path: Path) -> None:
    path = tmp_path / "empty.spyrec"
    with RecordingWriter(path) as w:
        assert w.count == 0
    assert list(read_recording(path)) == []
    text = tmp_path / "chain.csv"
    text.write_text("conId,strike\n1,500\n")
    assert not is_recording(text)
