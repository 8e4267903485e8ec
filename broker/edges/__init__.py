"""Network edges of the broker: one small module per transport."""
