"""The rpcjob operator: pure planner and renderers, kopf handlers, the local executor, the CLI."""

__version__ = "0.1.0"
