"""The evcharge broker: the single authority for queues, sessions and accounts."""
