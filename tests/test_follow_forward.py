"""An observer forwards submissions to the validators it follows, passing on why they refuse."""

from __future__ import annotations

import asyncio
from collections import OrderedDict

import pytest

from ledger.crypto import PrivateKey
from ledger.httpclient import ApiError
from ledger.tx import Transaction
from node.follow import Follower
from node.mempool import TxRejected

RAW = Transaction.create(PrivateKey(bytes([5]) * 32), chain_id="ch/test", nonce=0, contract="fiat",
                         function="transfer", args=[b"x" * 20, 1]).encode()


class _Client:
    def __init__(self, error: ApiError | None) -> None:
        self.error = error
        self.calls = 0

    async def submit(self, raw: bytes) -> None:
        self.calls += 1
        if self.error is not None:
            raise self.error


class _Source:
    def __init__(self, clients: list[_Client]) -> None:
        self.clients = clients
        self.at = 0

    @property
    def client(self) -> _Client:
        return self.clients[self.at]

    def rotate(self) -> None:
        self.at = (self.at + 1) % len(self.clients)


def _follower(errors: list[ApiError | None]) -> tuple[Follower, list[_Client]]:
    follower = object.__new__(Follower)
    clients = [_Client(e) for e in errors]
    follower.source = _Source(clients)
    follower._forwarded = OrderedDict()
    return follower, clients


def _busy() -> ApiError:
    return ApiError(503, "busy", "the node has 20000 transactions waiting for blocks; retry shortly")


def test_a_busy_validator_is_skipped_for_the_next():
    follower, clients = _follower([_busy(), None])
    assert asyncio.run(follower.forward(RAW)) == Transaction.decode(RAW).tx_id
    assert [c.calls for c in clients] == [1, 1]


def test_every_validator_busy_is_answered_busy_not_unavailable():
    follower, _ = _follower([_busy(), _busy()])
    with pytest.raises(TxRejected) as exc:
        asyncio.run(follower.forward(RAW))
    assert exc.value.code == "busy" and "retry shortly" in exc.value.message


def test_a_refusal_of_the_transaction_itself_is_passed_on_at_once():
    follower, clients = _follower([ApiError(400, "bad_nonce", "nonce 0 is already used"), None])
    with pytest.raises(TxRejected) as exc:
        asyncio.run(follower.forward(RAW))
    assert exc.value.code == "bad_nonce" and [c.calls for c in clients] == [1, 0]


def test_validators_out_of_reach_are_unavailable():
    follower, _ = _follower([ApiError(0, "unavailable", "connection refused")] * 2)
    with pytest.raises(TxRejected) as exc:
        asyncio.run(follower.forward(RAW))
    assert exc.value.code == "unavailable"
