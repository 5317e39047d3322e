"""rpcjob top, debug and profile: see docs/observability.md."""
