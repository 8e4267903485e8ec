"""Operations: local runner and container image tooling for evcharge."""
