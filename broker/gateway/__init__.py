"""The vehicle gateway: a process that holds vehicle connections for the core.

* :mod:`broker.gateway.replica` keeps the points from the bus (snapshot, then
  events) in a :class:`broker.core.read_path.PointReads`, so reads are answered
  with the core's own read path.
* :mod:`broker.gateway.wire` is the gateway <-> core protocol over ZeroMQ.
* :mod:`broker.gateway.link` is the gateway's side of it (forwarding, holding
  requests while the core is away, resending them to a restarted core).
* :mod:`broker.gateway.server` is the vehicle edge of the gateway (the core's
  own :mod:`broker.edges.vehicles_tcp` with another request handler).
* :mod:`broker.gateway.app` wires them; :mod:`broker.gateway.cli` is
  ``ev-broker gateway``.

The core's side is :mod:`broker.edges.gateways_zmq`.
"""
