"""A small fake of the Kubernetes API server's Lease endpoints, for the real ``kubernetes`` client.

It serves ``GET``/``PUT`` of ``/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}`` and ``POST``
of ``.../leases`` on 127.0.0.1 (port 0) in a thread, the way the API server does where it matters here:

* every write bumps a global ``resourceVersion``; a ``PUT`` at a stale one is ``409 Conflict``, a
  ``POST`` of an existing Lease is ``409 AlreadyExists``, a missing Lease is ``404 NotFound``;
* ``renewTime``/``acquireTime`` must be MicroTime (six fraction digits), as the API server parses them;
* this fake also insists that a ``PUT`` names its ``resourceVersion`` (the real server would accept an
  unconditional update of a Lease; the elector must never send one).

Faults, per client (matched in the ``User-Agent``, which the elector sets to ``spyops-executor (id)``):
:meth:`FakeKube.partition` drops its requests (the connection closes with no answer), holds them
unanswered until healed (``hang``) or answers 503 (``error``); :meth:`FakeKube.conflict_next` answers
its next writes with 409. :meth:`FakeKube.gate_reads` holds reads until ``n`` are waiting, so
candidates provably race on the same version.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

_PATH = re.compile(r"^/apis/coordination\.k8s\.io/v1/namespaces/([^/]+)/leases(?:/([^/?]+))?/?(?:\?.*)?$")
_MICRO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d\d:\d\d)$")

FaultMode = Literal["drop", "hang", "error"]


@dataclass(frozen=True, slots=True)
class Write:
    """A committed write, in commit order."""

    at: float  # time.monotonic() of the commit
    method: str
    holder: str
    transitions: int
    resource_version: str


class FakeKube:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._leases: dict[tuple[str, str], dict[str, Any]] = {}
        self._rv = itertools.count(1000)
        self._faults: dict[str, FaultMode] = {}
        self._conflicts: Counter[str] = Counter()
        self._healed: dict[str, threading.Event] = {}
        self._closing = threading.Event()
        self._read_gate: threading.Barrier | None = None
        self.responses: Counter[tuple[str, int]] = Counter()  # (method, status)
        self.dropped = 0
        self.writes: list[Write] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    # ------------------------------------------------------------- lifecycle

    def start(self) -> FakeKube:
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def close(self) -> None:
        self._closing.set()
        for event in list(self._healed.values()):
            event.set()
        if self._read_gate is not None:
            self._read_gate.abort()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    # ------------------------------------------------------------- control

    def partition(self, client: str, mode: FaultMode = "drop") -> None:
        with self._lock:
            self._faults[client] = mode
            self._healed[client] = threading.Event()

    def heal(self, client: str) -> None:
        with self._lock:
            self._faults.pop(client, None)
            event = self._healed.pop(client, None)
        if event is not None:
            event.set()

    def conflict_next(self, client: str, n: int = 1) -> None:
        with self._lock:
            self._conflicts[client] += n

    def gate_reads(self, n: int, timeout: float = 5.0) -> None:
        """Hold the next ``n`` GETs until all ``n`` have arrived (then answer them together)."""
        self._read_gate = threading.Barrier(n, timeout=timeout)

    def put_lease(
        self, namespace: str, name: str, spec: dict[str, Any], labels: dict[str, str] | None = None
    ) -> None:
        """Seed a Lease directly (as if another program had written it)."""
        meta: dict[str, Any] = {"name": name, **({"labels": labels} if labels else {})}
        with self._lock:
            self._store(namespace, name, {"metadata": meta, "spec": spec}, "SEED")

    def lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            obj = self._leases.get((namespace, name))
            return json.loads(json.dumps(obj)) if obj is not None else None

    def count(self, method: str, status: int) -> int:
        return self.responses[(method, status)]

    # ------------------------------------------------------------- the server side

    def _store(self, ns: str, name: str, body: dict[str, Any], method: str) -> dict[str, Any]:
        meta = dict(body.get("metadata") or {})
        old = self._leases.get((ns, name))
        meta.update(
            name=name,
            namespace=ns,
            resourceVersion=str(next(self._rv)),
            uid=(old or {}).get("metadata", {}).get("uid") or f"uid-{ns}-{name}",
            creationTimestamp=(old or {}).get("metadata", {}).get("creationTimestamp")
            or "2025-03-17T15:00:00Z",
        )
        spec: dict[str, Any] = dict(body.get("spec") or {})
        obj = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}
        self._leases[(ns, name)] = obj
        self.writes.append(
            Write(
                time.monotonic(),
                method,
                spec.get("holderIdentity") or "",
                int(spec.get("leaseTransitions") or 0),
                meta["resourceVersion"],
            )
        )
        return obj

    def _fault_for(self, user_agent: str) -> tuple[str, FaultMode | None, threading.Event | None]:
        with self._lock:
            for client, mode in self._faults.items():
                if f"({client})" in user_agent:
                    return client, mode, self._healed.get(client)
            return "", None, None

    def _take_conflict(self, user_agent: str) -> bool:
        with self._lock:
            for client, n in self._conflicts.items():
                if n > 0 and f"({client})" in user_agent:
                    self._conflicts[client] -= 1
                    return True
            return False

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> tuple[int, dict[str, Any]] | None:
        """The answer (status, body), or None to close the connection without one."""
        ua = h.headers.get("User-Agent", "")
        _, mode, healed = self._fault_for(ua)
        if mode == "drop":
            return None
        if mode == "hang":
            assert healed is not None
            healed.wait(30)
            return None
        if mode == "error":
            return _status(503, "ServiceUnavailable", "injected failure")

        m = _PATH.match(h.path)
        if m is None:
            return _status(404, "NotFound", f"the fake serves Leases only, not {h.path}")
        ns, name = m.group(1), m.group(2)
        body: dict[str, Any] = {}
        if method in ("POST", "PUT"):
            raw = h.rfile.read(int(h.headers.get("Content-Length") or 0))
            try:
                body = json.loads(raw or b"{}")
            except json.JSONDecodeError:
                return _status(400, "BadRequest", "body is not JSON")
            problem = _invalid(body)
            if problem:
                return _status(422, "Invalid", problem)

        if method == "GET":
            gate = self._read_gate
            if gate is not None and name is not None:
                with contextlib.suppress(threading.BrokenBarrierError):
                    gate.wait()
                self._read_gate = None
            with self._lock:
                obj = self._leases.get((ns, name or ""))
                if obj is None:
                    return _status(404, "NotFound", f'leases.coordination.k8s.io "{name}" not found')
                return 200, obj

        if method == "POST" and name is None:
            lease_name = str((body.get("metadata") or {}).get("name") or "")
            if (body.get("metadata") or {}).get("resourceVersion"):
                return _status(
                    400, "BadRequest", "resourceVersion should not be set on objects to be created"
                )
            if self._take_conflict(ua):
                return _status(409, "AlreadyExists", "injected conflict")
            with self._lock:
                if (ns, lease_name) in self._leases:
                    return _status(
                        409, "AlreadyExists", f'leases.coordination.k8s.io "{lease_name}" already exists'
                    )
                return 201, self._store(ns, lease_name, body, "POST")

        if method == "PUT" and name is not None:
            rv = (body.get("metadata") or {}).get("resourceVersion")
            if (body.get("metadata") or {}).get("name") != name:
                return _status(400, "BadRequest", "the name of the object does not match the URL")
            if not rv:
                return _status(422, "Invalid", "this fake requires metadata.resourceVersion on update")
            if self._take_conflict(ua):
                return _status(409, "Conflict", "injected conflict")
            with self._lock:
                obj = self._leases.get((ns, name))
                if obj is None:
                    return _status(404, "NotFound", f'leases.coordination.k8s.io "{name}" not found')
                if obj["metadata"]["resourceVersion"] != rv:
                    return _status(
                        409,
                        "Conflict",
                        f'Operation cannot be fulfilled on leases.coordination.k8s.io "{name}": the object '
                        f"has been modified; please apply your changes to the latest version and try again",
                    )
                return 200, self._store(ns, name, body, "PUT")

        return _status(405, "MethodNotAllowed", f"{method} {h.path}")

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self, method: str) -> None:
                answer = fake._handle(self, method)
                if answer is None:
                    with fake._lock:
                        fake.dropped += 1
                    self.close_connection = True
                    return
                status, body = answer
                with fake._lock:
                    fake.responses[(method, status)] += 1
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def do_PUT(self) -> None:
                self._serve("PUT")

            def log_message(self, format: str, *args: Any) -> None:
                return None

        return Handler


def _status(code: int, reason: str, message: str) -> tuple[int, dict[str, Any]]:
    return code, {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _invalid(body: dict[str, Any]) -> str:
    """Why the API server would refuse this Lease body ("" if it would not)."""
    spec = body.get("spec") or {}
    for field in ("renewTime", "acquireTime"):
        value = spec.get(field)
        if value is not None and not _MICRO_TIME.match(str(value)):
            return f"spec.{field}: {value!r} is not a MicroTime (RFC 3339 with 6 fraction digits)"
    duration = spec.get("leaseDurationSeconds")
    if duration is not None and (not isinstance(duration, int) or duration < 1):
        return f"spec.leaseDurationSeconds: {duration!r} must be a positive integer"
    transitions = spec.get("leaseTransitions")
    if transitions is not None and (not isinstance(transitions, int) or transitions < 0):
        return f"spec.leaseTransitions: {transitions!r} must be a non-negative integer"
    return ""
