"""The deterministic, metered Python contract runtime (to be built: issue "contract runtime").

A restricted subset of Python checked at deployment, instrumented for gas, executed
against a state overlay so a failed transaction reverts every write and event.
"""
