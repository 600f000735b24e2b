"""Smart meters as oracles (to be built).

A Modbus gateway (pymodbus) that reads meters, turns cumulative counters into signed
readings per elementary period and submits them durably; and a meter simulator.
Needs only the client SDK of ``ledger``.
"""
