"""txwatch's streaming side: Faust app, agents, state, codecs, metrics and CLI."""

__version__ = "0.1.0"
