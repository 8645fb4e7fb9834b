"""txwatch's streaming side: the worker (Faust app, agents, state, codecs, metrics) and its tools (command line, simulator, backtest, calibration, a local Kafka)."""

__version__ = "0.1.0"
