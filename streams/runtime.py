"""What a running worker is made of, for the modules that attach to it.

:func:`streams.app.create_app` builds a :class:`Runtime`; the agents
(:mod:`streams.agents`), the rules watcher (:mod:`streams.rules`), the
feedback ranker (:mod:`streams.feedback`) and the lending book
(:mod:`streams.portfolio`) receive it and attach themselves. They import this
module, not :mod:`streams.app`, so the app and its parts form no import circle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import faust

    from streams.metrics import PrometheusSensor
    from streams.pipeline import Monitor
    from streams.sensors import SensorDelegate
    from streams.settings import Settings
    from streams.stages import DerivedStage


@dataclass
class Runtime:
    """Everything a running worker is made of."""

    settings: Settings
    app: faust.App
    input_topic: Any
    alert_topic: Any
    dead_letter_topic: Any
    table: Any
    monitor: Monitor
    sensors: SensorDelegate
    metrics: PrometheusSensor | None
    agent: Any = None
    stages: dict[str, DerivedStage] = field(default_factory=dict)
    stage_topics: dict[str, Any] = field(default_factory=dict)
    stage_tables: dict[str, Any] = field(default_factory=dict)
    model_table: Any = None
