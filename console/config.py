"""The operator-side configuration shared by ``spy-console`` and ``spyctl``: which agents to talk to,
who the operator is, and the console heartbeat period.

Sources, strongest first: ``--agent`` values (repeatable, ``host:port`` or ``name=host:port``), the
config file (``--config FILE``, else ``$SPY_CONSOLE_CONFIG``, else ``~/.config/spyops/console.toml`` when
it exists), then the default agent ``127.0.0.1:50051``. The file is TOML::

    operator = "alice"
    heartbeat_s = 5
    [[agents]]
    name = "exec"
    address = "10.8.0.2:50051"

An ``--agent`` value whose name matches a configured agent replaces that agent's address; any other
``--agent`` value is added after the configured agents. Every error raises ``ConfigError`` naming the
file, the key and what is wrong.
"""

from __future__ import annotations

import getpass
import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_AGENT = "127.0.0.1:50051"
DEFAULT_HEARTBEAT_S = 5.0
CONFIG_ENV = "SPY_CONSOLE_CONFIG"
OPERATOR_ENV = "SPY_OPERATOR"
KNOWN_KEYS = frozenset({"operator", "heartbeat_s", "agents"})
AGENT_KEYS = frozenset({"name", "address"})
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_HOST_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+)$")


class ConfigError(ValueError):
    """A bad console configuration; the message names the file, the key and what is wrong."""


@dataclass(frozen=True)
class AgentTarget:
    name: str  # short display name (config name, or the address)
    address: str  # "host:port", validated


@dataclass(frozen=True)
class ConsoleConfig:
    agents: tuple[AgentTarget, ...]  # in order; at least one
    operator: str  # who sends commands (config, else $SPY_OPERATOR, else the login name)
    heartbeat_s: float = DEFAULT_HEARTBEAT_S  # console heartbeat period to executors (the dead-man)
    source: Path | None = None  # the config file read, if any (extra to the shared contract)

    def agent(self, name: str) -> AgentTarget:
        """The agent called ``name`` (or whose address is ``name``); ConfigError if none."""
        for target in self.agents:
            if name in (target.name, target.address):
                return target
        known = ", ".join(t.name for t in self.agents)
        raise ConfigError(f"no agent named {name!r} (configured: {known})")


def validate_address(address: str, where: str = "agent address") -> str:
    """Check ``host:port``; returns it unchanged or raises ConfigError saying what is wrong."""
    if not isinstance(address, str):
        raise ConfigError(f'{where}: expected a string "host:port", got {type(address).__name__}')
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{where}: {address!r} is not host:port (e.g. 127.0.0.1:50051)")
    if not _HOST_RE.match(host):
        raise ConfigError(f"{where}: {address!r} has a bad host {host!r}")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{where}: {address!r} has a bad port {port!r} (1-65535)")
    return address.strip()


def parse_agent_arg(value: str) -> AgentTarget:
    """One ``--agent`` value: ``host:port`` or ``name=host:port``."""
    name, sep, address = value.strip().partition("=")
    if not sep:
        address = validate_address(value, f"--agent {value!r}")
        return AgentTarget(name=address, address=address)
    name = name.strip()
    if not _NAME_RE.match(name):
        raise ConfigError(f"--agent {value!r}: bad name {name!r} (letters, digits, '_', '.', '-')")
    return AgentTarget(name=name, address=validate_address(address.strip(), f"--agent {value!r}"))


def default_config_path() -> Path | None:
    """``$SPY_CONSOLE_CONFIG`` if set, else ``~/.config/spyops/console.toml`` if it exists."""
    env = os.environ.get(CONFIG_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    path = home / "spyops" / "console.toml"
    return path if path.is_file() else None


def default_operator() -> str:
    env = os.environ.get(OPERATOR_ENV, "").strip()
    if env:
        return env
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (containers without a passwd entry)
        return "unknown"


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def _file_agents(path: Path, raw: object) -> list[AgentTarget]:
    if not isinstance(raw, list):
        raise ConfigError(f"{path}: key 'agents': expected a list of [[agents]] tables")
    agents: list[AgentTarget] = []
    for i, entry in enumerate(raw):
        where = f"{path}: key 'agents[{i}]'"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where}: expected a table with name and address")
        unknown = sorted(set(entry) - AGENT_KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (known: address, name)")
        if "address" not in entry:
            raise ConfigError(f"{where}.address: missing (host:port)")
        address = validate_address(entry["address"], f"{where}.address")
        name = entry.get("name", address)
        if not isinstance(name, str) or not (name == address or _NAME_RE.match(name)):
            raise ConfigError(f"{where}.name: bad name {name!r} (letters, digits, '_', '.', '-')")
        if any(a.name == name for a in agents):
            raise ConfigError(f"{where}.name: duplicate agent name {name!r}")
        agents.append(AgentTarget(name=name, address=address))
    return agents


def parse_console_config(path: Path, data: Mapping[str, Any]) -> tuple[list[AgentTarget], str, float]:
    """Validate a parsed config file: (agents, operator or "", heartbeat_s)."""
    unknown = sorted(set(data) - KNOWN_KEYS)
    if unknown:
        raise ConfigError(
            f"{path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(KNOWN_KEYS))})"
        )
    operator = data.get("operator", "")
    if not isinstance(operator, str):
        raise ConfigError(f"{path}: key 'operator': expected a string, got {type(operator).__name__}")
    heartbeat = data.get("heartbeat_s", DEFAULT_HEARTBEAT_S)
    if isinstance(heartbeat, bool) or not isinstance(heartbeat, int | float):
        raise ConfigError(f"{path}: key 'heartbeat_s': expected a number of seconds, got {heartbeat!r}")
    heartbeat = float(heartbeat)
    if not math.isfinite(heartbeat) or not 0.1 <= heartbeat <= 300:
        raise ConfigError(f"{path}: key 'heartbeat_s': {heartbeat:g} is out of range (0.1 to 300 seconds)")
    agents = _file_agents(path, data["agents"]) if "agents" in data else []
    return agents, operator.strip(), heartbeat


def _is_bare_name(value: str) -> bool:
    return ":" not in value and "=" not in value and bool(_NAME_RE.match(value.strip()))


def _by_name(agents: Sequence[AgentTarget], name: str, path: Path | None) -> AgentTarget:
    for target in agents:
        if name in (target.name, target.address):
            return target
    where = f" in {path}" if path is not None else " (no config file)"
    known = ", ".join(t.name for t in agents) or "none"
    raise ConfigError(
        f"--agent {name!r}: not host:port, and no agent has that name{where} (configured: {known})"
    )


def select_agents(config: ConsoleConfig, values: Sequence[str]) -> tuple[AgentTarget, ...]:
    """The agents a command addresses: every configured agent when no ``--agent`` is given, else exactly
    the ones given (``name`` of a configured agent, ``host:port`` or ``name=host:port``), in order."""
    if not values:
        return config.agents
    chosen: list[AgentTarget] = []
    for value in values:
        if _is_bare_name(value):
            target = _by_name(config.agents, value.strip(), config.source)
        else:
            given = parse_agent_arg(value)
            target = next(
                (
                    t
                    for t in config.agents
                    if given.name in (t.name, t.address) and t.address == given.address
                ),
                given,
            )
        if target not in chosen:
            chosen.append(target)
    return tuple(chosen)


def load_console_config(agents: Sequence[str] = (), config: Path | None = None) -> ConsoleConfig:
    """Build the configuration from ``--agent`` values and the config file (see the module doc)."""
    path = config if config is not None else default_config_path()
    file_agents: list[AgentTarget] = []
    operator = ""
    heartbeat = DEFAULT_HEARTBEAT_S
    if path is not None:
        path = path.expanduser()
        file_agents, operator, heartbeat = parse_console_config(path, _read_toml(path))
    merged = list(file_agents)
    for value in agents:
        if _is_bare_name(value):
            _by_name(merged, value.strip(), path)  # names a configured agent: nothing to add
            continue
        target = parse_agent_arg(value)
        for i, existing in enumerate(merged):
            if target.name in (existing.name, existing.address):
                merged[i] = AgentTarget(name=existing.name, address=target.address)
                break
        else:
            merged.append(target)
    if not merged:
        merged = [AgentTarget(name=DEFAULT_AGENT, address=DEFAULT_AGENT)]
    return ConsoleConfig(
        agents=tuple(merged),
        operator=operator or default_operator(),
        heartbeat_s=heartbeat,
        source=path,
    )
