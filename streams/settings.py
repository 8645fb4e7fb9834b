"""One settings object, read once from ``TXWATCH_*`` environment variables.

Every variable is documented beside its field and listed in the README
(`Configuration`). Secrets are :class:`Secret` so they never print.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final

PREFIX = "TXWATCH_"
#: The public key personal identifiers are hashed with in development mode only.
DEV_PII_KEY: Final = "txwatch-dev-only-key"
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class Secret:
    """A string that does not show itself in ``repr`` or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class SettingsError(ValueError):
    """A ``TXWATCH_*`` variable holds a value that cannot be used."""


def _env(name: str, help: str, default: Any = None, *, minimum: float | None = None,
         maximum: float | None = None) -> Any:
    """A field read from ``TXWATCH_<name>``; numbers outside ``[minimum, maximum]`` are refused."""
    return field(default=default, metadata={"env": PREFIX + name, "help": help,
                                            "minimum": minimum, "maximum": maximum})


@dataclass(frozen=True)
class Settings:
    """Worker, simulator and CLI settings."""

    broker: str = _env(
        "BROKER", "Kafka bootstrap servers, host:port[,host:port].", "127.0.0.1:9092"
    )
    security_protocol: str = _env(
        "SECURITY_PROTOCOL",
        "How to talk to Kafka: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.",
        "PLAINTEXT",
    )
    sasl_mechanism: str = _env(
        "SASL_MECHANISM", "SASL mechanism: SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN.", "SCRAM-SHA-512"
    )
    sasl_username: str = _env("SASL_USERNAME", "SASL user name (SASL_* protocols).", "")
    sasl_password: Secret = _env(
        "SASL_PASSWORD", "SASL password (SASL_* protocols).", Secret("")
    )
    ssl_cafile: Path | None = _env(
        "SSL_CAFILE",
        "PEM file of the CA certificates that sign the broker's; the system's when unset.",
        None,
    )
    app_id: str = _env(
        "APP_ID", "Faust application id: the consumer group and the table prefix.", "txwatch"
    )
    payments_topic: str = _env(
        "PAYMENTS_TOPIC",
        "Input topic for payment, crowdfunding and account events.",
        "txwatch.payments",
    )
    lending_topic: str = _env(
        "LENDING_TOPIC",
        "Input topic for lending events; the payments topic's name puts every event type on one"
        " topic, so each account's events keep one order.",
        "txwatch.lending",
    )
    alert_topic: str = _env("ALERT_TOPIC", "Output topic for alerts (JSON).", "txwatch.alerts")
    dead_letter_topic: str = _env(
        "DEAD_LETTER_TOPIC",
        "Output topic for rejected messages with their reason.",
        "txwatch.dead-letters",
    )
    config_topic: str = _env(
        "CONFIG_TOPIC",
        "Compacted topic of detector configuration versions (key 'detectors'); every worker "
        "follows it and applies a new version without a restart.",
        "txwatch.config",
    )
    feedback_topic: str = _env(
        "FEEDBACK_TOPIC",
        "Compacted topic of analysts' dispositions of alerts (feedback.schema.json), keyed by "
        "alert_id.",
        "txwatch.feedback",
    )
    feedback_min_dispositions: int = _env(
        "FEEDBACK_MIN_DISPOSITIONS",
        "Dispositions learnt before alerts carry feedback_probability.",
        20,
        minimum=1,
    )
    feedback_memory: int = _env(
        "FEEDBACK_MEMORY", "Recent alerts each worker remembers, to match dispositions to them.",
        100000,
        minimum=1,
    )
    partitions: int = _env(
        "PARTITIONS", "Partitions of the input topics and of the state changelog.", 4, minimum=1
    )
    replication_factor: int = _env(
        "REPLICATION_FACTOR",
        "Replicas of every topic txwatch creates (inputs, alerts, dead letters, derived stages,"
        " rules, feedback, changelogs), with min.insync.replicas one less (at least 1); 0: the"
        " number of brokers, at most 3.",
        0, minimum=0, maximum=32,
    )
    metrics_port: int = _env(
        "METRICS_PORT", "HTTP port of the Prometheus /metrics endpoint (0: any free port).", 9108,
        minimum=0, maximum=65535,
    )
    metrics_host: str = _env("METRICS_HOST", "Address the /metrics endpoint binds.", "127.0.0.1")
    pii_key: Secret = _env(
        "PII_KEY",
        "HMAC key for hashing personal identifiers; no default: the worker, backtest and "
        "evaluate refuse to start without it unless TXWATCH_DEV_MODE is on.",
        Secret(""),
    )
    dev_mode: bool = _env(
        "DEV_MODE",
        "Development mode (txwatch demo, the tests, the benchmark; never in production): "
        "without TXWATCH_PII_KEY the public development key hashes personal identifiers, "
        "and without TXWATCH_DETECTOR_CONFIG the demo configuration applies.",
        False,
    )
    max_message_bytes: int = _env(
        "MAX_MESSAGE_BYTES", "Larger input messages are dead-lettered as oversized.", 65536,
        minimum=1,
    )
    batch_size: int = _env(
        "BATCH_SIZE", "Events per processing batch (state is written once per batch).", 1000,
        minimum=1,
    )
    batch_within: float = _env(
        "BATCH_WITHIN", "Seconds to wait for a batch to fill before processing it.", 0.05,
        minimum=0,
    )
    detector_config: Path | None = _env(
        "DETECTOR_CONFIG",
        "JSON file with detector thresholds; when unset, the packaged defaults (the demo "
        "configuration in development mode).",
        None,
    )
    data_dir: Path = _env(
        "DATA_DIR", "Directory for worker data and local broker files.", Path("var")
    )
    dead_letter_clear_payload: bool = _env(
        "DEAD_LETTER_CLEAR_PAYLOAD",
        "Keep personal fields in clear in dead-letter payloads (default: replaced by hashes).",
        False,
    )
    consumer_session_timeout: float = _env(
        "SESSION_TIMEOUT", "Consumer group session timeout in seconds.", 30.0, minimum=1
    )
    rebalance_timeout: float = _env(
        "REBALANCE_TIMEOUT", "Consumer group rebalance timeout in seconds.", 30.0, minimum=1
    )
    log_level: str = _env("LOG_LEVEL", "Worker log level.", "INFO")

    def __post_init__(self) -> None:
        protocol = self.security_protocol
        if protocol not in SECURITY_PROTOCOLS:
            message = (f"{PREFIX}SECURITY_PROTOCOL={protocol!r}: expected one of "
                       f"{', '.join(SECURITY_PROTOCOLS)}")
            raise SettingsError(message)
        if protocol.startswith("SASL"):
            if self.sasl_mechanism not in SASL_MECHANISMS:
                message = (f"{PREFIX}SASL_MECHANISM={self.sasl_mechanism!r}: expected one of "
                           f"{', '.join(SASL_MECHANISMS)}")
                raise SettingsError(message)
            if not self.sasl_username or not self.sasl_password.get():
                message = (f"{PREFIX}SECURITY_PROTOCOL={protocol} needs {PREFIX}SASL_USERNAME "
                           f"and {PREFIX}SASL_PASSWORD")
                raise SettingsError(message)
        for path_field in ("ssl_cafile", "detector_config"):
            path = getattr(self, path_field)
            if path is not None and not path.is_file():
                message = f"{_variable(path_field)}={str(path)!r}: no such file"
                raise SettingsError(message)
        if self.log_level.upper() not in LOG_LEVELS:
            message = (f"{PREFIX}LOG_LEVEL={self.log_level!r}: expected one of "
                       f"{', '.join(LOG_LEVELS)}")
            raise SettingsError(message)
        for f in fields(self):
            low, high = f.metadata["minimum"], f.metadata["maximum"]
            if low is None and high is None:
                continue
            value = getattr(self, f.name)
            if (low is not None and value < low) or (high is not None and value > high):
                expected = (f"at least {low:g}" if high is None else
                            f"between {low:g} and {high:g}")
                message = f"{f.metadata['env']}={value!r}: expected {expected}"
                raise SettingsError(message)

    def kafka_client(self) -> dict[str, Any]:
        """aiokafka keyword arguments for the security settings (admin, producer, consumer)."""
        protocol = self.security_protocol
        options: dict[str, Any] = {"security_protocol": protocol}
        if protocol in ("SSL", "SASL_SSL"):
            cafile = str(self.ssl_cafile) if self.ssl_cafile is not None else None
            options["ssl_context"] = ssl.create_default_context(cafile=cafile)
        if protocol.startswith("SASL"):
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password.get()
        return options

    def hashing_key(self) -> bytes:
        """The HMAC key for personal identifiers, as bytes.

        Raises
        ------
        SettingsError
            ``TXWATCH_PII_KEY`` is not set and development mode is off: a
            public default would let anyone reverse the hashes of phone numbers
            and national ids by trying every value.
        """
        key = self.pii_key.get()
        if key:
            return key.encode()
        if self.dev_mode:
            return DEV_PII_KEY.encode()
        message = (f"{PREFIX}PII_KEY is not set: set it to a secret key (it hashes personal "
                   f"identifiers), or {PREFIX}DEV_MODE=1 for a local run with the public "
                   f"development key")
        raise SettingsError(message)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every field from ``environ`` (default ``os.environ``); overrides win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = f.metadata["env"]
            if f.name in overrides:
                values[f.name] = overrides[f.name]
                continue
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(name, f.default, raw)
        return cls(**values)

    @property
    def input_topics(self) -> tuple[str, ...]:
        """The topics the worker reads: payments and lending, or one when they are the same.

        One topic for every event type keeps each account's events in one
        ordered stream (``docs/guarantees.md``, "Per-account order").
        """
        if self.lending_topic == self.payments_topic:
            return (self.payments_topic,)
        return (self.payments_topic, self.lending_topic)

    @classmethod
    def documentation(cls) -> list[tuple[str, str, str]]:
        """``(variable, default, help)`` rows, for the README and ``txwatch settings``."""
        return [(f.metadata["env"], _shown(f.default), f.metadata["help"]) for f in fields(cls)]

    @classmethod
    def markdown_table(cls) -> str:
        """The README's table of settings (``txwatch settings --markdown``)."""
        lines = ["| variable | default | meaning |", "|---|---|---|"]
        for variable, default, help_text in cls.documentation():
            cell = default if default == UNSET else f"`{default}`"
            lines.append(f"| `{variable}` | {cell} | {help_text} |")
        return "\n".join(lines) + "\n"


#: How :meth:`Settings.documentation` shows a setting without a default (secrets included).
UNSET: Final = "unset"


def _shown(default: Any) -> str:
    if default is None or default == "" or (isinstance(default, Secret) and not default.get()):
        return UNSET
    if isinstance(default, Secret):
        return "(secret)"
    if isinstance(default, bool):
        return "true" if default else "false"
    return str(default)


def _variable(name: str) -> str:
    """The environment variable of the field ``name``."""
    variable: str = next(f for f in fields(Settings) if f.name == name).metadata["env"]
    return variable


def _parse(name: str, default: Any, raw: str) -> Any:
    try:
        if isinstance(default, bool):
            lowered = raw.strip().lower()
            if lowered not in {"1", "0", "true", "false", "yes", "no"}:
                message = f"{name}={raw!r}: expected true or false"
                raise SettingsError(message)
            return lowered in {"1", "true", "yes"}
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, Secret):
            return Secret(raw)
        if isinstance(default, Path) or default is None:
            return Path(raw)
        return raw
    except ValueError as exc:
        if isinstance(exc, SettingsError):
            raise
        message = f"{name}={raw!r}: {exc}"
        raise SettingsError(message) from exc
