"""Simulated charging stations: a pure charging model, its UDP/ZeroMQ edge, fleets, CLI."""
