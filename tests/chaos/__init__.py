"""The whole stack under faults, with an invariant checker (``make chaos``; docs/reliability.md)."""
