"""gRPC client library shared by ``spy-console`` and ``spyctl``: talks to agents over the contract only.

``AgentClient`` wraps one channel with deadlines on every unary call. ``ResumingStream`` follows an
agent's event stream forever: it reconnects with backoff after a drop and resumes from its last seq + 1
(or takes the fresh snapshot the agent sends when that is no longer possible), so the consumer never
sees a gap or a duplicate. It reports connection changes as ``ConnectionState`` values.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import grpc

from proto.spyops.v1 import spyops_pb2 as pb
from proto.spyops.v1 import spyops_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

DEFAULT_DEADLINE_S = 5.0
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 3_000),
]


class ClientError(Exception):
    """Base of the console-side errors; the message is fit to show an operator."""


class AgentUnreachable(ClientError):
    pass


class AgentRequestError(ClientError):
    def __init__(self, message: str, code: grpc.StatusCode) -> None:
        super().__init__(message)
        self.code = code


def _translate(target: str, err: grpc.aio.AioRpcError) -> ClientError:
    code = err.code()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return AgentUnreachable(f"agent {target} is unreachable ({code.name}): {err.details()}")
    return AgentRequestError(f"agent {target} refused the request ({code.name}): {err.details()}", code)


def parse_target(target: str) -> str:
    """Validate ``host:port``; raises ClientError with what is wrong."""
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClientError(f"bad agent address {target!r}: expected host:port, e.g. 127.0.0.1:50051")
    return target


class AgentClient:
    def __init__(self, target: str, deadline: float = DEFAULT_DEADLINE_S) -> None:
        self.target = parse_target(target)
        self.deadline = deadline
        self._channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        self._stub = pb_grpc.AgentServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close(None)

    async def __aenter__(self) -> AgentClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def info(self) -> pb.AgentInfo:
        try:
            return await self._stub.GetInfo(pb.GetInfoRequest(), timeout=self.deadline)
        except grpc.aio.AioRpcError as err:
            raise _translate(self.target, err) from None

    async def snapshot(self) -> pb.Snapshot:
        try:
            return await self._stub.GetSnapshot(pb.GetSnapshotRequest(), timeout=self.deadline)
        except grpc.aio.AioRpcError as err:
            raise _translate(self.target, err) from None

    async def execute(self, command: pb.Command) -> pb.CommandResult:
        """Send one operator command (idempotent on its key: safe to retry after a timeout)."""
        try:
            return await self._stub.Execute(command, timeout=self.deadline)
        except grpc.aio.AioRpcError as err:
            raise _translate(self.target, err) from None

    async def health(self) -> str:
        """Standard gRPC health status of the agent ("SERVING", ...)."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            resp = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=self.deadline)
        except grpc.aio.AioRpcError as err:
            raise _translate(self.target, err) from None
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))

    def raw_stream(
        self,
        from_seq: int = 0,
        topics: Sequence[str] = (),
        incarnation: str = "",
        lossless: bool = False,
        client_name: str = "",
        wait_for_ready: bool = False,
    ) -> grpc.aio.UnaryStreamCall[pb.StreamRequest, pb.Envelope]:
        request = pb.StreamRequest(
            from_seq=from_seq,
            topics=list(topics),
            incarnation=incarnation,
            lossless=lossless,
            client_name=client_name,
        )
        return self._stub.Stream(request, wait_for_ready=wait_for_ready)

    async def stream_once(
        self, from_seq: int = 0, topics: Sequence[str] = (), lossless: bool = False, client_name: str = ""
    ) -> AsyncIterator[pb.Envelope]:
        """One stream call without reconnection; errors become ClientError."""
        call = self.raw_stream(from_seq, topics, lossless=lossless, client_name=client_name)
        try:
            async for env in call:
                yield env
        except grpc.aio.AioRpcError as err:
            raise _translate(self.target, err) from None
        finally:
            call.cancel()


class ConnectionState(enum.Enum):
    CONNECTING = "connecting"
    LIVE = "live"
    RECONNECTING = "reconnecting"
    FAILED = "failed"  # the agent refuses the request itself (bad arguments): retrying will not help


@dataclass(frozen=True, slots=True)
class ConnectionEvent:
    target: str
    state: ConnectionState
    detail: str
    attempt: int = 0


class GapError(ClientError):
    """The agent sent an envelope that does not follow the previous one (a bug, never expected)."""


@dataclass
class Backoff:
    """Exponential backoff with full jitter; ``reset`` after a successful connection."""

    initial: float = 0.2
    maximum: float = 5.0
    attempt: int = 0

    def next_delay(self) -> float:
        self.attempt += 1
        return random.uniform(0, min(self.maximum, self.initial * 2 ** (self.attempt - 1)))

    def reset(self) -> None:
        self.attempt = 0


class ResumingStream:
    """Follows an agent's stream across disconnects without gaps or duplicates."""

    def __init__(
        self,
        client: AgentClient,
        topics: Sequence[str] = (),
        lossless: bool = False,
        from_seq: int = 0,
        on_state: Callable[[ConnectionEvent], None] | None = None,
        client_name: str = "",
        backoff: Backoff | None = None,
    ) -> None:
        self.client = client
        self.topics = list(topics)
        self.lossless = lossless
        self.last_seq = from_seq - 1 if from_seq > 0 else 0
        self.incarnation = ""
        self._on_state = on_state or (lambda _e: None)
        self._name = client_name
        self.backoff = backoff or Backoff()
        self.reconnects = 0
        self._started = from_seq > 0

    def _emit(self, state: ConnectionState, detail: str) -> None:
        self._on_state(ConnectionEvent(self.client.target, state, detail, self.backoff.attempt))

    def _accept(self, env: pb.Envelope) -> bool:
        """True if the envelope continues the stream; False for a duplicate (dropped)."""
        if env.HasField("snapshot"):
            self.incarnation = env.snapshot.incarnation
            self.last_seq = env.seq
            return True
        first = env.first_seq or env.seq
        if env.seq <= self.last_seq:
            return False
        if self.last_seq and not self.topics and first != self.last_seq + 1:
            raise GapError(f"gap in the stream of {self.client.target}: seq {self.last_seq} then {first}")
        self.last_seq = env.seq
        return True

    async def __aiter__(self) -> AsyncGenerator[pb.Envelope, None]:
        self._emit(ConnectionState.CONNECTING, f"connecting to {self.client.target}")
        while True:
            from_seq = self.last_seq + 1 if (self.last_seq or self._started) else 0
            call = self.client.raw_stream(
                from_seq, self.topics, self.incarnation, self.lossless, self._name, wait_for_ready=False
            )
            live = False
            try:
                async for env in call:
                    if not live:
                        live = True
                        self.backoff.reset()
                        self._emit(ConnectionState.LIVE, f"streaming from seq {from_seq or 'snapshot'}")
                    if self._accept(env):
                        yield env
                detail = "the agent ended the stream"
            except grpc.aio.AioRpcError as err:
                code = err.code()
                if code == grpc.StatusCode.INVALID_ARGUMENT:
                    self._emit(ConnectionState.FAILED, f"{code.name}: {err.details()}")
                    raise _translate(self.client.target, err) from None
                if code == grpc.StatusCode.OUT_OF_RANGE:
                    # our position is ahead of the agent: it restarted; start over from a snapshot
                    self.last_seq, self.incarnation, self._started = 0, "", False
                detail = f"{code.name}: {err.details()}"
            finally:
                call.cancel()
            self.reconnects += 1
            delay = self.backoff.next_delay()
            self._emit(ConnectionState.RECONNECTING, f"{detail}; retrying in {delay:.1f} s")
            await asyncio.sleep(delay)
