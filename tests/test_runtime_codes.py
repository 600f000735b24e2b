"""A contract names its refusals with codes; the runtime's own codes stay reserved."""

from contracts.executor import BlockContext, Executor, GenesisContract, apply_genesis
from ledger.crypto import PrivateKey
from ledger.tx import Transaction

SHARD = "ch/test"
ALICE = PrivateKey(bytes([1]) * 32)

SOURCE = '''
@export
def refuse(message: str):
    fail(message)


@export
def check(ok: bool):
    require(ok, "insufficient_balance: 5 needed, 3 held")
'''


class DictReader:
    def __init__(self, data):
        self.data = data

    def get(self, key):
        return self.data.get(key)


def _run(function, args):
    state = {}
    genesis = apply_genesis(DictReader(state), BlockContext(SHARD, 0, 0), deployers=[ALICE.address.raw],
                            contracts=[GenesisContract("codes", SOURCE, (), ALICE.address.raw)])
    state.update({k: v for k, v in genesis.writes.items() if v is not None})
    tx = Transaction.create(ALICE, chain_id=SHARD, nonce=0, contract="codes", function=function, args=args)
    return Executor().execute_block(DictReader(state), BlockContext(SHARD, 1, 10), [tx]).receipts[0]


def test_require_with_a_code_prefix_gives_that_code():
    receipt = _run("check", [False])
    assert receipt.error == ("insufficient_balance", "insufficient_balance: 5 needed, 3 held")


def test_fail_without_a_code_is_a_contract_error():
    assert _run("refuse", ["something went wrong"]).error == ("contract_error", "something went wrong")
    assert _run("refuse", ["Capital: not a code"]).error[0] == "contract_error"
    assert _run("refuse", ["two words: not a code"]).error[0] == "contract_error"


def test_a_contract_cannot_claim_a_runtime_code():
    for reserved in ("out_of_gas", "bad_nonce", "not_member", "limit"):
        assert _run("refuse", [f"{reserved}: pretending"]).error[0] == "contract_error"
