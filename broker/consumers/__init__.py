"""Processes fed by the broker's bus (subscriber + one typed projection each)."""
