"""The shard tree: the genesis topology, paths through the lowest common ancestor, bridges."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.crypto import Address, PrivateKey
from shards.errors import TopologyError
from shards.topology import (
    BridgeSpec,
    ShardSpec,
    Topology,
    bridge_address,
    check_shard_id,
    parent_of,
)

GENESIS = Path(__file__).resolve().parent.parent / "genesis" / "three-levels.toml"


def test_genesis_topology_is_a_three_level_tree_of_at_least_seven_shards():
    topology = Topology.load(GENESIS)
    assert topology.root == "ch"
    assert len(topology.ids) >= 7
    assert {topology.depth(s) for s in topology.ids} == {0, 1, 2}
    assert topology.children("ch") == ("ch/bern", "ch/zurich")
    for child in topology.ids:
        if child != "ch":
            assert topology.bridge(child) is not None, f"{child} has no bridge registered at genesis"


def test_lca_and_path_between_local_shards_of_different_areas():
    topology = Topology.load(GENESIS)
    assert topology.lca("ch/zurich/oerlikon", "ch/bern/breitenrain") == "ch"
    assert topology.lca("ch/zurich/oerlikon", "ch/zurich/altstetten") == "ch/zurich"
    assert topology.lca("ch/zurich", "ch/zurich/oerlikon") == "ch/zurich"
    assert topology.path("ch/zurich/oerlikon", "ch/zurich/altstetten") == (
        "ch/zurich/oerlikon", "ch/zurich", "ch/zurich/altstetten",
    )
    assert topology.path("ch/bern", "ch/bern/bethlehem") == ("ch/bern", "ch/bern/bethlehem")


def _tree(seed_ids: list[str]) -> Topology:
    ids = {"ch"}
    for raw in seed_ids:
        parts = ["ch", *raw.split("/")]
        for i in range(1, len(parts) + 1):
            ids.add("/".join(parts[:i]))
    return Topology.build([ShardSpec(i) for i in sorted(ids)])


segment = st.sampled_from(["a", "b", "c"])
tree_ids = st.lists(st.lists(segment, min_size=1, max_size=3).map("/".join), min_size=1, max_size=8)


@given(tree_ids, st.data())
def test_path_climbs_to_the_lca_and_descends_through_neighbours(ids, data):
    topology = _tree(ids)
    a = data.draw(st.sampled_from(topology.ids))
    b = data.draw(st.sampled_from(topology.ids))
    path = topology.path(a, b)
    assert path[0] == a and path[-1] == b
    assert len(set(path)) == len(path)
    assert topology.lca(a, b) in path
    assert path == tuple(reversed(topology.path(b, a)))
    for x, y in zip(path, path[1:], strict=False):
        assert topology.is_neighbour(x, y)
    top = min(path, key=topology.depth)
    assert top == topology.lca(a, b)
    # Each edge of the path is reserved by exactly one hop: the end closer to the LCA.
    if len(path) > 1:
        reserved = [e for i in range(len(path)) for e in topology.edges_reserved_at(path, i)]
        assert sorted(reserved) == sorted(topology.edges(path))


def test_bridge_addresses_are_deterministic_distinct_and_keyless():
    topology = Topology.load(GENESIS)
    addresses = {bridge_address(a, b) for a in topology.ids for b in topology.neighbours(a)}
    assert len(addresses) == sum(len(topology.neighbours(a)) for a in topology.ids)
    assert bridge_address("ch", "ch/zurich") == bridge_address("ch", "ch/zurich")
    assert bridge_address("ch", "ch/zurich") != bridge_address("ch/zurich", "ch")
    assert all(len(a) == 20 for a in addresses)
    key_address = Address.from_public_key(PrivateKey(bytes(32)).public_key.raw).raw
    assert key_address not in addresses


@pytest.mark.parametrize("bad", ["", "Ch", "ch/", "ch//x", "ch/zü", "-ch", "a" * 33, "/".join(["a"] * 9), 5])
def test_malformed_shard_ids_are_refused(bad):
    with pytest.raises(TopologyError):
        check_shard_id(bad)


def test_parent_of_is_the_id_without_its_last_segment():
    assert parent_of("ch/zurich/oerlikon") == "ch/zurich"
    assert parent_of("ch") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[shards."ch"]\n[shards."de"]\n', "exactly one root"),
        ('[shards."ch"]\n[shards."ch/zurich/oerlikon"]\n', "no parent"),
        ('[shards."ch"]\nprotocol = "pow"\n', "protocol"),
        ('[shards."ch"]\n[shards."ch/zurich"]\n[bridges."ch"]\ncapacity_wh = 1\nfee_per_kwh = 1\n', "not a child"),
        ('[shards."ch"]\n[shards."ch/zurich"]\n[bridges."ch/zurich"]\ncapacity_wh = -1\nfee_per_kwh = 1\n', "capacity_wh"),
        ('[shards."ch"]\n[shards."ch/zurich"]\n[bridges."ch/zurich"]\ncapacity_wh = 1\n', "exactly capacity_wh"),
        ('colour = "blue"\n[shards."ch"]\n', "unknown top-level"),
        ('[shards."ch"]\nvalidatorz = 4\n', "unknown keys"),
        ("not toml [", "not valid TOML"),
    ],
)
def test_malformed_topology_documents_are_refused_with_a_reason(text, message):
    with pytest.raises(TopologyError) as refused:
        Topology.from_toml(text)
    assert message in refused.value.message


def test_unknown_shard_is_refused():
    topology = Topology.load(GENESIS)
    with pytest.raises(TopologyError) as refused:
        topology.path("ch", "ch/geneva")
    assert refused.value.code == "unknown_shard"


def test_topology_hash_names_the_tree_and_its_bridges():
    a = Topology.build([ShardSpec("ch"), ShardSpec("ch/x")], [BridgeSpec("ch/x", 10, 1)])
    b = Topology.build([ShardSpec("ch/x"), ShardSpec("ch")], [BridgeSpec("ch/x", 10, 1)])
    c = Topology.build([ShardSpec("ch"), ShardSpec("ch/x")], [BridgeSpec("ch/x", 11, 1)])
    assert a.hash == b.hash != c.hash
