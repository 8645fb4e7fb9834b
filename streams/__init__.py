"""txwatch's streaming side: the worker and its tools.

The worker: the Faust app, agents, state, codecs and metrics. Its tools: the
command line, simulator, backtest, calibration and a local Kafka.
"""

__version__ = "0.1.0"
