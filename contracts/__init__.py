"""Contracts: the deterministic, metered Python runtime (:mod:`contracts.runtime`) and the
energy applications written in it and deployed at genesis (:mod:`contracts.system`).

Imports only ``ledger``.
"""
