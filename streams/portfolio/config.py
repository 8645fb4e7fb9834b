"""The lending book's settings, its configuration file and the names it shares.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import orjson

from detectors.portfolio import (
    PortfolioConfig,
)
from streams.settings import PREFIX, Settings, SettingsError

TABLE_NAME: Final = "portfolio_loans"
AGENT_NAME: Final = "txwatch.portfolio"
LOAN_CODEC: Final = "txwatch_loan"
EMITTED_KEY: Final = b"alerts:emitted"
#: Alert ids remembered on the partials topic.
EMITTED_KEPT: Final = 5000
#: A partition's partial is published at least this often, changed or not.
REFRESH_SECONDS: Final = 30.0
EVICT_INTERVAL_SECONDS: Final = 60.0
ALERT_KEY: Final = b"portfolio"


# -- settings -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PortfolioSettings:
    """The portfolio's ``TXWATCH_PORTFOLIO_*`` variables (read once, like :class:`Settings`).

    Parameters
    ----------
    config
        ``TXWATCH_PORTFOLIO_CONFIG``: JSON file with bucket edges, periods and
        limits (keys of ``detectors.portfolio.DEFAULT_PORTFOLIO_CONFIG``);
        the packaged defaults when unset.
    topic
        ``TXWATCH_PORTFOLIO_TOPIC``: compacted topic of the partition
        partials; default ``<TXWATCH_APP_ID>-portfolio-partials``.
    publish_interval
        ``TXWATCH_PORTFOLIO_PUBLISH_INTERVAL``: seconds between two publishes
        of a changed partial (default 1).
    evaluate_interval
        ``TXWATCH_PORTFOLIO_EVALUATE_INTERVAL``: seconds between two
        computations of the merged book, gauges and limits (default 1).
    """

    config: Path | None = None
    topic: str | None = None
    publish_interval: float = 1.0
    evaluate_interval: float = 1.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PortfolioSettings:
        env = os.environ if environ is None else environ

        def number(name: str, default: float) -> float:
            raw = env.get(PREFIX + name, "").strip()
            if not raw:
                return default
            try:
                value = float(raw)
            except ValueError as exc:
                message = f"{PREFIX}{name}={raw!r}: {exc}"
                raise SettingsError(message) from exc
            if not value > 0:
                message = f"{PREFIX}{name}={raw!r}: must be positive"
                raise SettingsError(message)
            return value

        config = env.get(PREFIX + "PORTFOLIO_CONFIG", "").strip()
        topic = env.get(PREFIX + "PORTFOLIO_TOPIC", "").strip()
        return cls(
            config=Path(config) if config else None,
            topic=topic or None,
            publish_interval=number("PORTFOLIO_PUBLISH_INTERVAL", 1.0),
            evaluate_interval=number("PORTFOLIO_EVALUATE_INTERVAL", 1.0),
        )

    def topic_for(self, settings: Settings) -> str:
        return self.topic or f"{settings.app_id}-portfolio-partials"

    @classmethod
    def documentation(cls) -> list[tuple[str, str, str]]:
        """``(variable, default, help)`` rows, for the README."""
        return [
            (PREFIX + "PORTFOLIO_CONFIG", "None",
             "JSON file with the portfolio's buckets, periods and limits."),
            (PREFIX + "PORTFOLIO_TOPIC", "<app id>-portfolio-partials",
             "Compacted topic of the per-partition portfolio partials."),
            (PREFIX + "PORTFOLIO_PUBLISH_INTERVAL", "1.0",
             "Seconds between two publishes of a changed partition partial."),
            (PREFIX + "PORTFOLIO_EVALUATE_INTERVAL", "1.0",
             "Seconds between two evaluations of the merged book (gauges, limits)."),
        ]


def load_portfolio_config(path: Path | None) -> PortfolioConfig:
    """The configuration in the file at ``path``, else the packaged defaults."""
    if path is None:
        return PortfolioConfig.from_mapping({})
    try:
        raw = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        message = f"cannot read portfolio configuration {path}: {exc}"
        raise ValueError(message) from exc
    if not isinstance(raw, dict):
        message = f"portfolio configuration {path} must be a JSON object"
        raise ValueError(message)
    return PortfolioConfig.from_mapping(raw)


