"""OCPP 1.6J gateway: chargers that speak OCPP join the network as ordinary stations.

See docs/ocpp.md for every mapping rule.

```
passwords.py      hashing and checking charger passwords (HTTP Basic auth, Security Profile 1)
chargers_file.py  the TOML chargers file: one entry per charger, validated
mapping.py        pure rules: OCPP status -> our estado, stop reasons, meter values, idTags
point.py          OcppPoint: one charger as a hosted station (what station.host.Host drives)
state.py          the gateway's state file (boot id, open transactions, unacked completions)
gateway.py        the asyncio edge: WebSocket server, OCPP handlers, calls to chargers
walkin.py         locally started transactions become walk-in sessions (a vehicle connection)
simulator.py      a simulated OCPP charger (the ocpp package's ChargePoint), for tests and compose
```
"""
