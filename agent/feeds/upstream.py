"""Market data from another agent's stream (``--feed upstream --upstream host:port``).

A role split across pods takes its input over the same contract every client uses: this source
subscribes to the upstream agent's ``market`` topic, resumes from its last seq after a drop (or takes a
fresh snapshot if the upstream restarted), and republishes the market events on the local log.
Reconnection backoff is gRPC's own channel backoff (``wait_for_ready``), capped at a few seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import cast

import grpc

from agent.domain import ComponentHealth, ComponentStatus, Notice, NoticeLevel
from agent.events import Payload
from agent.wire import WireError, market_from_envelope
from proto.spyops.v1 import spyops_pb2 as pb
from proto.spyops.v1 import spyops_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 3_000),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


class UpstreamFeed:
    def __init__(
        self,
        target: str,
        publish: Callable[[Payload, int], None],
        set_health: Callable[[ComponentHealth], None],
        client_name: str = "upstream-feed",
    ) -> None:
        self.target = target
        self._publish = publish
        self._set_health = set_health
        self._client_name = client_name
        self.next_seq = 0
        self.incarnation = ""
        self.lag_ms = 0.0
        self.connected = False

    def _status(self, status: ComponentStatus, detail: str) -> None:
        self._set_health(ComponentHealth("upstream", status, detail))

    async def run(self) -> None:
        async with grpc.aio.insecure_channel(self.target, options=CHANNEL_OPTIONS) as channel:
            stub = pb_grpc.AgentServiceStub(channel)
            while True:
                await self._follow(stub)
                await asyncio.sleep(0.2)

    async def _follow(self, stub: pb_grpc.AgentServiceStub) -> None:
        request = pb.StreamRequest(
            from_seq=self.next_seq,
            topics=["market"],
            incarnation=self.incarnation,
            client_name=self._client_name,
        )
        call = cast(
            "grpc.aio.UnaryStreamCall[pb.StreamRequest, pb.Envelope]",
            stub.Stream(request, wait_for_ready=True),
        )
        try:
            async for env in call:
                if not self.connected:
                    self.connected = True
                    self._status(ComponentStatus.OK, f"following {self.target} from seq {self.next_seq}")
                if env.HasField("snapshot"):
                    self.incarnation = env.snapshot.incarnation
                self.next_seq = env.seq + 1
                self.lag_ms = max(0.0, (time.time_ns() - env.wall_ns) / 1e6) if env.wall_ns else 0.0
                try:
                    payloads = market_from_envelope(env)
                except WireError as exc:
                    self._publish(
                        Notice(NoticeLevel.WARN, "data_quality.upstream", str(exc), source="upstream"),
                        env.ts_ns,
                    )
                    continue
                for p in payloads:
                    self._publish(p, env.ts_ns)
        except grpc.aio.AioRpcError as err:
            self.connected = False
            code = err.code()
            if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE):
                # our position means nothing to the upstream any more (restarted): start afresh
                self.next_seq, self.incarnation = 0, ""
            self._status(ComponentStatus.DOWN, f"{self.target}: {code.name}: {err.details()}")
            self._publish(
                Notice(
                    NoticeLevel.WARN,
                    "upstream.disconnected",
                    f"lost upstream {self.target} ({code.name}: {err.details()}); reconnecting",
                    source="upstream",
                ),
                0,
            )
            log.warning("upstream %s: %s %s", self.target, code.name, err.details())
