"""The energy market as system contracts, deployed by genesis.

The contracts themselves are sources in the runtime's language under
``contracts/system/contracts/`` (membership, fiat, market_config, energy_tokens,
meters, reconciliation, grid_fees, settlement, traceability), specified by
``MARKET.md``. :mod:`contracts.system.genesis` lists them in deployment order and
builds a consortium's genesis entries; :mod:`contracts.system.admission` is the
node's admission policy (members, roles, suspensions).
"""
