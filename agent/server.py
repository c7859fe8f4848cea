"""The gRPC edge of an agent: ``spyops.v1.AgentService`` plus health checking and reflection.

Translates requests into calls on the event log and domain values into wire messages; no logic of
its own. Stream responses are sent pre-serialized (each event is encoded once for all clients).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from agent import __version__
from agent.eventlog import EventLog, StreamRequestError
from agent.executor.commands import CommandOutcome, CommandSpec
from agent.wire import WireError, command_from_pb, encode_item, outcome_to_pb, snapshot_message
from proto.spyops.v1 import spyops_pb2 as pb

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["AgentService"].full_name


class AgentStartError(RuntimeError):
    """The agent cannot start (port in use, bad address); the message says what to do."""


@dataclass(frozen=True, slots=True)
class AgentIdentity:
    agent_id: str
    roles: tuple[str, ...]
    feed: str
    session_date: str
    session_close_ns: int
    clock_speed: float
    upstream: str = ""


CommandHandler = Callable[[CommandSpec], Awaitable[CommandOutcome]]


class AgentServicer:
    def __init__(
        self,
        event_log: EventLog,
        identity: AgentIdentity,
        clock_ns: Callable[[], int],
        commands: CommandHandler | None = None,
    ) -> None:
        self._log = event_log
        self._id = identity
        self._clock_ns = clock_ns
        self.commands = commands

    async def execute(self, request: pb.Command, context: Context) -> pb.CommandResult:
        if self.commands is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"agent {self._id.agent_id} runs no executor (roles: {', '.join(self._id.roles) or 'none'})",
            )
        try:
            spec = command_from_pb(request)
        except WireError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return outcome_to_pb(await self.commands(spec))

    async def get_info(self, request: pb.GetInfoRequest, context: Context) -> pb.AgentInfo:
        return pb.AgentInfo(
            agent_id=self._id.agent_id,
            version=__version__,
            roles=list(self._id.roles),
            session_date=self._id.session_date,
            clock_ns=self._clock_ns(),
            wall_ns=time.time_ns(),
            clock_speed=self._id.clock_speed,
            feed=self._id.feed,
            last_seq=self._log.last_seq,
            oldest_seq=self._log.oldest_seq,
            incarnation=self._log.incarnation,
            session_close_ns=self._id.session_close_ns,
            upstream=self._id.upstream,
            clients=self._log.clients,
        )

    async def get_snapshot(self, request: pb.GetSnapshotRequest, context: Context) -> pb.Snapshot:
        return snapshot_message(self._log.snapshot())

    async def stream(self, request: pb.StreamRequest, context: Context) -> AsyncIterator[bytes]:
        name = request.client_name or context.peer()
        try:
            sub = self._log.subscribe(
                from_seq=request.from_seq,
                topics=list(request.topics),
                incarnation=request.incarnation,
                lossless=request.lossless,
                name=name,
            )
        except StreamRequestError as exc:
            code = grpc.StatusCode.OUT_OF_RANGE if "future" in str(exc) else grpc.StatusCode.INVALID_ARGUMENT
            await context.abort(code, str(exc))
        log.info("stream client %s subscribed from_seq=%d", name, request.from_seq)
        agent_id = self._id.agent_id
        try:
            while True:
                batch = await sub.next_batch()
                if not batch:
                    await context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED, sub.closed_reason or "stream closed by the agent"
                    )
                for item in batch:
                    yield encode_item(agent_id, item)
        finally:
            sub.unsubscribe()
            log.info("stream client %s left at seq %d", name, sub.delivered_seq)


def _handler(servicer: AgentServicer) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
    return grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "GetInfo": grpc.unary_unary_rpc_method_handler(
                servicer.get_info,
                request_deserializer=pb.GetInfoRequest.FromString,
                response_serializer=pb.AgentInfo.SerializeToString,
            ),
            "GetSnapshot": grpc.unary_unary_rpc_method_handler(
                servicer.get_snapshot,
                request_deserializer=pb.GetSnapshotRequest.FromString,
                response_serializer=pb.Snapshot.SerializeToString,
            ),
            "Execute": grpc.unary_unary_rpc_method_handler(
                servicer.execute,
                request_deserializer=pb.Command.FromString,
                response_serializer=pb.CommandResult.SerializeToString,
            ),
            # responses are already-serialized Envelope bytes (no serializer)
            "Stream": grpc.unary_stream_rpc_method_handler(
                servicer.stream, request_deserializer=pb.StreamRequest.FromString
            ),
        },
    )


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: health.HealthServicer

    async def stop(self, grace: float = 1.0) -> None:
        self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


async def start_server(servicer: AgentServicer, host: str, port: int) -> RunningServer:
    """Bind and start the gRPC server; port 0 picks a free port. Raises AgentStartError."""
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 0),  # a port in use must fail, not be shared silently
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ]
    )
    server.add_generic_rpc_handlers((_handler(servicer),))
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    address = f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise AgentStartError(
            f"cannot listen on {address}: {exc}. Is another agent running there? "
            "Choose another --port (0 picks a free one)."
        ) from None
    if bound == 0:
        raise AgentStartError(f"cannot listen on {address}: address unavailable or port in use")
    await server.start()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    log.info("agent serving on %s:%d", host, bound)
    return RunningServer(server=server, port=bound, health=health_servicer)
