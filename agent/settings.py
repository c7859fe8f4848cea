"""The agent's typed settings: defaults < TOML file < environment (``SPY_*``) < command line.

Only this module reads the environment. ``load_settings`` validates everything at start and raises
``ConfigError`` with messages that say which setting is wrong and why.
"""

from __future__ import annotations

import datetime as dt
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

ROLES = ("feed", "detector", "executor")
Role = Literal["feed", "detector", "executor"]
FeedKind = Literal["sim", "replay", "upstream", "ib"]


class ConfigError(ValueError):
    """Invalid configuration; the message lists every problem in terms a user can act on."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SimSettings(_Section):
    seed: int = Field(7, description="random seed: the same seed and start replay the same market")
    spot: float = Field(590.0, gt=1.0, lt=100_000.0, description="SPY level at the start")
    strikes_each_side: int = Field(25, ge=3, le=200, description="$1 strikes each side of the money")
    step_ms: int = Field(250, ge=10, le=60_000, description="market-time step of the simulation")
    anomaly_rate_per_min: float = Field(0.0, ge=0.0, le=600.0, description="injected anomalies per minute")
    labels_path: Path | None = Field(None, description="JSONL file for ground-truth anomaly labels")


class ReplaySettings(_Section):
    path: Path | None = Field(None, description="recording (.spyrec) or IB chain CSV to play back")
    pace: Literal["recorded", "fast"] = Field("recorded", description="recorded pace or as fast as possible")


class ClockSettings(_Section):
    speed: float = Field(1.0, gt=0.0, le=10_000.0, description="market seconds per wall second")
    start: str | None = Field(None, description="start the market clock at HH:MM New York time")
    date: dt.date | None = Field(None, description="session date (default: today, or the next session)")

    @field_validator("start")
    @classmethod
    def _hhmm(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            dt.time.fromisoformat(v)
        except ValueError:
            raise ValueError(f"expected HH:MM (New York time), got {v!r}") from None
        return v


class ServerSettings(_Section):
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port (0 picks a free one)")
    buffer_size: int = Field(20_000, ge=100, le=5_000_000, description="events kept for resuming clients")
    max_pending: int = Field(
        5_000, ge=10, le=1_000_000, description="undelivered events before a client is cut"
    )


class DetectorSettings(_Section):
    """Thresholds of the detector's rules (the most used; the engine has defaults for the rest)."""

    commission_per_contract: float = Field(0.65, ge=0.0, le=10.0, description="$ per contract per leg")
    min_edge_per_unit: float = Field(0.01, ge=0.0, le=1000.0, description="smallest edge worth a signal, $")
    max_leg_skew_ms: float = Field(1000.0, ge=0.0, description="legs quoted further apart are not one trade")
    resolve_after_evals: int = Field(3, ge=1, le=1000, description="clean evaluations before resolving")
    resolve_after_ms: float = Field(500.0, ge=0.0, description="and at least this long (hysteresis)")
    smile_rich_cheap_vol_pts: float = Field(0.3, gt=0.0, le=50.0, description="smile outlier threshold")
    stale_min_move_ticks: float = Field(2.0, gt=0.0, description="move that a stale quote ignored")
    wide_spread_mult: float = Field(5.0, gt=1.0, description="spread vs its neighbours' that is abnormal")
    volume_spike_mult: float = Field(8.0, gt=1.0, description="volume vs its rolling baseline")
    iv_jump_z: float = Field(8.0, gt=0.0, description="IV change vs its own recent distribution")
    smile_every_s: float = Field(
        1.0, ge=0.0, le=60.0, description="publish the fitted smile at most this often"
    )


class PlaybookSettings(_Section):
    """Which signals the executor acts on, and how (off by default: nothing trades by itself)."""

    mode: Literal["off", "propose", "auto"] = Field(
        "off", description="propose: an operator confirms each entry"
    )
    kinds: tuple[str, ...] = Field(
        ("parity", "box", "vertical", "butterfly", "intrinsic"),
        description="signal kinds the mode applies to",
    )
    pricing: Literal["mid", "touch", "improve"] = "touch"
    improve_ticks: int = Field(0, ge=0, le=100)
    units: int = Field(1, ge=1, le=1000, description="combinations per entry, before the caps")
    max_premium: float = Field(1000.0, gt=0.0, description="$ per entry")
    min_edge: float = Field(0.0, ge=0.0, description="$ per unit below which a signal is ignored")
    take_profit_usd: float | None = Field(None, gt=0.0, description="$ per unit")
    stop_loss_usd: float | None = Field(None, gt=0.0, description="$ per unit")
    max_hold_s: float | None = Field(None, gt=0.0)
    flatten_before_close_min: float = Field(10.0, gt=0.0, lt=390.0, description="15:50 on a normal day")
    proposal_ttl_s: float = Field(30.0, gt=0.0)
    cooldown_s: float = Field(300.0, ge=1.0)


class LeaseSettings(_Section):
    """Leader election on a Kubernetes Lease: with several replicas only the leader sends orders."""

    enabled: bool = Field(False, description="off: one executor, kept single by its journal's file lock")
    namespace: str = "default"
    name: str = Field("spyops-executor", description="the Lease object")
    identity: str | None = Field(
        None, description="this replica (default: host name, pid and a random suffix)"
    )
    api_url: str | None = Field(
        None, description="API server URL outside the cluster (in-cluster credentials if unset)"
    )
    lease_duration_s: float = Field(15.0, gt=0.0)
    renew_deadline_s: float = Field(10.0, gt=0.0)
    retry_period_s: float = Field(2.0, gt=0.0)


class ExecutorSettings(_Section):
    """The executor: its journal, the paper broker, operators, dead-man and risk limits."""

    journal: Path = Field(
        Path("var/executor-journal.sqlite"), description="write-ahead order journal (SQLite)"
    )
    paper_book: Path = Field(Path("var/paper-broker.sqlite"), description="the paper broker's own book")
    fail_state: Literal["halted", "reducing"] = Field(
        "halted", description="state after an unexplained difference"
    )
    operators: tuple[str, ...] = Field(
        (), description="operators allowed to send commands (empty: any named one)"
    )
    deadman_s: float = Field(
        30.0, ge=1.0, le=3600.0, description="armed without a heartbeat this long -> action"
    )
    deadman_action: Literal["halt", "disarm", "flatten"] = "halt"
    commission_per_contract: float = Field(0.65, ge=0.0, le=10.0, description="paper broker commission")
    broker: Literal["paper", "ib"] = Field("paper", description="where orders go: paper broker or IB")
    limits: dict[str, Any] = Field(
        default_factory=dict, description="pre-trade risk limits (RiskLimits names)"
    )
    playbook: PlaybookSettings = PlaybookSettings()
    lease: LeaseSettings = LeaseSettings()


class IBSettings(_Section):
    """Interactive Brokers Gateway / TWS: the connection, the market data window, request pacing."""

    host: str = Field("127.0.0.1", description="IB Gateway / TWS host")
    port: int = Field(4002, ge=1, le=65535, description="API port: 4002 Gateway paper, 4001 Gateway live")
    client_id: int = Field(17, ge=0, le=2_147_483_647, description="API client id (unique per connection)")
    client_id_pool: tuple[int, ...] = Field(
        (), description="further client ids to try, in order, when one is in use (error 326)"
    )
    read_only: bool = Field(False, description="market data only: an IB broker refuses to start")
    account: str = Field("", description="account to trade and reconcile (empty: the only managed one)")
    symbol: str = Field("SPY", description="underlying (its options' trading class is the same)")
    market_data_type: Literal[1, 2, 3, 4] = Field(
        1, description="1 live, 2 frozen, 3 delayed, 4 delayed-frozen"
    )
    line_budget: int = Field(100, ge=5, le=10_000, description="market data lines of the account")
    reserved_underlying_lines: int = Field(1, ge=0, le=100, description="lines kept for the underlying")
    reserved_order_lines: int = Field(4, ge=0, le=1_000, description="lines kept free for order legs etc.")
    window_hysteresis_strikes: int = Field(
        2, ge=0, le=100, description="re-centre the strike window only after the money moved this far"
    )
    request_rate: int = Field(45, ge=1, le=50, description="messages per second to the Gateway (limit 50)")
    connect_timeout_s: float = Field(10.0, gt=0.0, le=300.0)
    reconnect_initial_s: float = Field(1.0, gt=0.0, le=600.0, description="first reconnect delay")
    reconnect_max_s: float = Field(30.0, gt=0.0, le=3600.0, description="reconnect delay cap (backoff)")
    commission_wait_s: float = Field(
        2.0, ge=0.0, le=60.0, description="how long a fill waits for its commission report"
    )

    @model_validator(mode="after")
    def _consistent(self) -> IBSettings:
        if self.reserved_underlying_lines + self.reserved_order_lines + 2 > self.line_budget:
            raise ValueError(
                f"line_budget {self.line_budget} leaves no lines for options after "
                f"{self.reserved_underlying_lines} underlying + {self.reserved_order_lines} order lines"
            )
        if self.client_id in self.client_id_pool:
            raise ValueError(f"client_id {self.client_id} is also listed in client_id_pool")
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError("reconnect_max_s must be >= reconnect_initial_s")
        return self


def _default_agent_id() -> str:
    return socket.gethostname().split(".")[0] or "agent"


class AgentSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SPY_", env_nested_delimiter="__", extra="forbid", frozen=True, toml_file=None
    )

    agent_id: str = Field(default_factory=_default_agent_id, min_length=1, max_length=64)
    roles: Annotated[tuple[Role, ...], NoDecode] = ("feed",)  # "feed,detector" in env and CLI
    feed: FeedKind = "sim"
    upstream: str | None = Field(None, description="host:port of the agent whose stream feeds this one")
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    sim: SimSettings = SimSettings()
    replay: ReplaySettings = ReplaySettings()
    detector: DetectorSettings = DetectorSettings()
    executor: ExecutorSettings = ExecutorSettings()
    clock: ClockSettings = ClockSettings()
    server: ServerSettings = ServerSettings()
    ib: IBSettings = IBSettings()

    @field_validator("roles", mode="before")
    @classmethod
    def _split_roles(cls, v: Any) -> Any:
        if isinstance(v, str):
            return tuple(r.strip() for r in v.split(",") if r.strip())
        return v

    @field_validator("upstream")
    @classmethod
    def _hostport(cls, v: str | None) -> str | None:
        if v is None:
            return v
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected host:port, got {v!r}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> AgentSettings:
        if len(set(self.roles)) != len(self.roles):
            raise ValueError(f"roles listed twice: {','.join(self.roles)}")
        if self.feed == "upstream" and not self.upstream:
            raise ValueError("feed 'upstream' needs --upstream host:port (SPY_UPSTREAM)")
        if self.feed == "replay" and self.replay.path is None:
            raise ValueError("feed 'replay' needs a file: --replay FILE (SPY_REPLAY__PATH)")
        if self.replay.path is not None and not self.replay.path.is_file():
            raise ValueError(f"replay file {self.replay.path} does not exist")
        if "executor" in self.roles and self.executor.broker == "ib" and self.feed in ("sim", "replay"):
            raise ValueError(
                f"executor.broker 'ib' sends real orders: it needs real quotes (feed 'ib', or 'upstream' from "
                f"an IB feed agent), not feed {self.feed!r}"
            )
        if "executor" in self.roles and self.executor.broker == "ib" and self.ib.read_only:
            raise ValueError(
                "executor.broker 'ib' cannot trade with ib.read_only = true: use the paper broker, or "
                "untick 'Read-Only API' in the Gateway and set ib.read_only = false"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "settings"
        msg = e["msg"].removeprefix("Value error, ")
        got = e.get("input")
        shown = f" (got {got!r})" if got is not None and not isinstance(got, dict) else ""
        lines.append(f"  {where}: {msg}{shown}")
    return "invalid configuration:\n" + "\n".join(lines)


def load_settings(config_file: Path | None = None, **overrides: Any) -> AgentSettings:
    """Settings from defaults, an optional TOML file, ``SPY_*`` variables and ``overrides``.

    ``overrides`` holds command-line values; nested sections are dicts (``sim={"seed": 3}``). None
    values are ignored, so unset options do not mask the file or the environment.
    """
    if config_file is not None and not config_file.is_file():
        raise ConfigError(f"configuration file {config_file} does not exist")
    clean: dict[str, Any] = {}
    for key, value in overrides.items():
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if v is not None}
            if not value:
                continue
        if value is not None:
            clean[key] = value

    class _FromFile(AgentSettings):
        model_config = SettingsConfigDict(toml_file=config_file)

    try:
        # init values win over env and file; sources are deep-merged, so sim={"seed": 3} keeps the
        # file's other sim settings
        settings: AgentSettings = _FromFile(**clean)
        return settings
    except ValidationError as err:
        raise ConfigError(_format_errors(err)) from None
    except (OSError, ValueError) as err:  # unreadable or malformed TOML
        raise ConfigError(f"cannot read configuration: {err}") from None
