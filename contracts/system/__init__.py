"""The energy market as system contracts, deployed by genesis (to be built).

Membership and roles, tokenised fiat, energy tokens with tradable producer and
consumer sides, meter registry and readings, reconciliation, grid fees, settlement.
"""
