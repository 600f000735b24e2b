"""Shards that mirror the grid (to be built).

Grid-level topology (shard ids are paths such as ``ch/zurich/oerlikon``), bridge
addresses between parent and child shards, cross-shard flows carried as packets with
proofs, light clients of neighbouring shards, and the untrusted relayer.
"""
