"""The wire contract: committed generated code is fresh; payloads and reserved ranges; health, reflection."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from agent.runtime import AgentThread
from proto.generate import ROOT, generate
from proto.spyops.v1 import spyops_pb2 as pb

GENERATED_DIR = "proto/spyops/v1"


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    generate(tmp_path)
    fresh_dir = tmp_path / GENERATED_DIR
    fresh = {p.name: p.read_bytes() for p in fresh_dir.iterdir() if p.is_file()}
    assert fresh, "protoc produced nothing"
    committed = {
        p.name: p.read_bytes() for p in (ROOT / GENERATED_DIR).iterdir() if "_pb2" in p.name and p.is_file()
    }
    assert sorted(fresh) == sorted(committed), (
        f"generated files differ in name: fresh {sorted(fresh)}, committed {sorted(committed)}; run `make proto`"
    )
    stale = [name for name in sorted(fresh) if fresh[name] != committed[name]]
    assert not stale, (
        f"{', '.join(stale)} out of date with spyops.proto: run `make proto` and commit the result"
    )


def _reserved(msg: Descriptor) -> set[int]:
    dp = descriptor_pb2.DescriptorProto()
    msg.CopyToProto(dp)
    out: set[int] = set()
    for r in dp.reserved_range:
        out.update(range(r.start, r.end))  # end is exclusive in the descriptor
    return out


def test_envelope_carries_every_required_payload() -> None:
    oneof = pb.Envelope.DESCRIPTOR.oneofs_by_name["payload"]
    payloads = {f.name: f.message_type.name for f in oneof.fields if f.message_type is not None}
    required = {
        "underlying": "UnderlyingTick",
        "chain": "ChainUpdate",
        "signal": "Signal",
        "order": "OrderUpdate",
        "fill": "Fill",
        "position": "Position",
        "risk": "RiskState",
        "health": "Health",
        "notice": "Notice",
        "snapshot": "Snapshot",
    }
    for name, type_name in required.items():
        assert payloads.get(name) == type_name, f"Envelope.payload lacks {name} ({type_name})"
    header = {f.name: f.number for f in pb.Envelope.DESCRIPTOR.fields if f.containing_oneof is None}
    assert header == {"agent_id": 1, "seq": 2, "ts_ns": 3, "wall_ns": 4, "first_seq": 5}
    assert pb.DESCRIPTOR.package == "spyops.v1"


@pytest.mark.parametrize(
    "message",
    [
        "Envelope",
        "AgentInfo",
        "OptionQuote",
        "ChainUpdate",
        "Signal",
        "OrderUpdate",
        "Fill",
        "Position",
        "RiskState",
        "Health",
        "Snapshot",
    ],
)
def test_reserved_ranges_leave_room(message: str) -> None:
    """New fields take reserved numbers (never renumbering): each message keeps room to grow."""
    desc = pb.DESCRIPTOR.message_types_by_name[message]
    reserved = _reserved(desc)
    used = {f.number for f in desc.fields}
    assert len(reserved) >= 4, f"{message} has {len(reserved)} reserved field numbers left"
    assert not used & reserved
    assert min(reserved) > max(used) or message == "Envelope"  # header numbers sit below the payloads


def test_envelope_keeps_room_for_new_payloads() -> None:
    reserved = _reserved(pb.Envelope.DESCRIPTOR)
    payload_numbers = {f.number for f in pb.Envelope.DESCRIPTOR.oneofs_by_name["payload"].fields}
    assert len({n for n in reserved if n > max(payload_numbers)}) >= 10


def test_service_methods() -> None:
    svc = pb.DESCRIPTOR.services_by_name["AgentService"]
    methods = {m.name: (m.input_type.name, m.output_type.name, m.server_streaming) for m in svc.methods}
    assert methods["GetInfo"] == ("GetInfoRequest", "AgentInfo", False)
    assert methods["GetSnapshot"] == ("GetSnapshotRequest", "Snapshot", False)
    assert methods["Stream"] == ("StreamRequest", "Envelope", True)


async def test_health_and_reflection_are_served(sim_agent: AgentThread) -> None:
    async with grpc.aio.insecure_channel(sim_agent.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "spyops.v1.AgentService"):
            resp = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING

        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="spyops.v1.Envelope"),
        ]
        responses = [r async for r in stub.ServerReflectionInfo(iter(requests), timeout=5)]
        services = {s.name for s in responses[0].list_services_response.service}
        assert {"spyops.v1.AgentService", "grpc.health.v1.Health"} <= services
        assert any(b"spyops.v1" in f for f in responses[1].file_descriptor_response.file_descriptor_proto)
