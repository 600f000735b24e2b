"""Shards that mirror the grid.

Grid-level topology (shard ids are paths such as ``ch/zurich/oerlikon``), bridge
addresses between parent and child shards, cross-shard flows carried as packets with
proofs, light clients of neighbouring shards, and the untrusted relayer. The protocol is
specified in ``shards/DESIGN.md``.

Public surface:

* :mod:`shards.topology`: ``Topology`` (load ``genesis/three-levels.toml``, ``path``,
  ``lca``, ``edges_reserved_at``), ``bridge_address``.
* :mod:`shards.lightclient`: ``LightClient`` of a neighbour (certificates, validator-set
  epochs, equivocation), ``validator_epoch_key`` / ``encode_epoch_record`` (what a shard
  records when its validator set changes), ``Equivocation``, ``ScheduleProof``.
* :mod:`shards.packets`: ``Packet``, ``Delivery``, ``outbox_key``, ``verify_packet``.
* :mod:`shards.records`: ``FlowSpec``, ``HopRecord``, the ``Storage`` and ``Effects``
  interfaces the node implements.
* :mod:`shards.flow`: ``FlowModule`` (the per-shard state machine), ``install_genesis``,
  ``split_transfer``, ``edge_fee``; :mod:`shards.intake`: its ``deliver`` (verification,
  equivocation and violation evidence, bridge freeze).
* :mod:`shards.quote`: ``quote_flow`` (the fee estimate and capacity check shown to the
  consumer before anything is locked).
* :mod:`shards.relay`: ``plan_channel``, ``build_delivery``, ``Handover`` (what a relayer
  delivers next).
* :mod:`shards.native`: ``BridgeModule`` (the flow module as a node executor's native
  module ``bridge``), ``check_genesis_topology``.
* :mod:`shards.sim`: the deterministic simulator, ``python -m shards.sim``.

Every refusal is a :class:`shards.errors.BridgeError` with a stable ``code``.
"""
