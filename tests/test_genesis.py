"""Genesis documents: every field checked, the wrong one named; the hash is canonical."""

import json

import pytest

from ledger.crypto import PrivateKey
from ledger.genesis import Genesis, GenesisError


def _doc():
    v = {
        "name": "operator-1",
        "node_key": PrivateKey(bytes([1]) * 32).public_key.hex(),
        "bls_key": "a" * 96,
        "bls_pop": "b" * 192,
    }
    return {
        "chain_id": "ch/zurich",
        "genesis_time": 1_767_225_600,
        "protocol": "bft",
        "params": {"period_seconds": 900},
        "validators": [v],
        "accounts": [{"address": str(PrivateKey(bytes([2]) * 32).address), "roles": ["producer"], "label": "solar"}],
    }


def test_genesis_loads_and_fills_default_params(tmp_path):
    path = tmp_path / "genesis.json"
    path.write_text(json.dumps(_doc()))
    g = Genesis.load(path)
    assert g.chain_id == "ch/zurich" and g.protocol == "bft" and g.validators.n == 1
    assert g.param("period_seconds") == 900 and g.param("block_max_txs") > 0
    assert g.accounts[0].roles == ("producer",)


def test_genesis_hash_does_not_depend_on_key_order():
    doc = _doc()
    reordered = dict(reversed(list(doc.items())))
    assert Genesis.from_document(doc).hash == Genesis.from_document(reordered).hash
    doc2 = _doc()
    doc2["genesis_time"] += 1
    assert Genesis.from_document(doc2).hash != Genesis.from_document(doc).hash


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d.pop("chain_id"), "genesis.chain_id"),
        (lambda d: d.update(chain_id="ch//x"), "genesis.chain_id"),
        (lambda d: d.update(protocol="pow"), "genesis.protocol"),
        (lambda d: d["params"].update(period_seconds=0), "genesis.params.period_seconds"),
        (lambda d: d["params"].update(block_minutes=3), "genesis.params.block_minutes"),
        (lambda d: d["validators"][0].update(node_key="zz"), r"genesis.validators\[0\].node_key"),
        (lambda d: d["validators"].append(dict(d["validators"][0])), "appears twice"),
        (lambda d: d["accounts"][0].update(address="grid1qqqq"), r"genesis.accounts\[0\].address"),
        (lambda d: d["accounts"][0].update(roles=["king"]), r"genesis.accounts\[0\].roles"),
        (lambda d: d.update(extra=1), "unknown fields"),
        (lambda d: d.update(genesis_time=1.5), "genesis.genesis_time"),
    ],
)
def test_bad_genesis_names_the_field(mutate, field):
    doc = _doc()
    mutate(doc)
    with pytest.raises(GenesisError, match=field):
        Genesis.from_document(doc)
