"""Smart meters as oracles: a Modbus gateway and a meter simulator. Needs only ``ledger``.

Command entry points (the CLI delegates to them):

- ``meters.gateway.main(argv)``: ``gridledger meter gateway --config meters.toml``
  polls meters over Modbus TCP / RTU, turns cumulative counters into integer Wh per
  elementary period, validates, stores durably, signs with each meter's own key and
  submits ``meters.submit_readings`` transactions; serves /healthz, /status, /metrics.
- ``meters.simulator.main(argv)``: ``gridledger meter simulate --config sim.toml``
  serves simulated SDM630 / SunSpec 203 / custom-map meters with solar, wind and
  household profiles and faults on demand, deterministic from a seed.

Modules, one job each:

    registers   register words <-> numbers, exact scaling
    maps/       register maps: sdm630, sunspec (model chain walk), custom TOML
    readings    counter samples -> readings per period; validation; the Flag bits
    queue       the durable SQLite queue (states, readings, signed transactions)
    nodeapi     the whole boundary with the node and the meters contract
    submit      batching, nonces, recovery: each reading on chain exactly once
    modbus      pymodbus connections; poller: poll cycles and device health
    status      /healthz /status /metrics; config: the gateway's TOML and keys
    profiles, simmeter, simulator   the simulator
    fakenode, testbed               test doubles and helpers for tests and benches
"""
