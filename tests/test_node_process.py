"""The node as real processes on loopback: commit, verified reads, restart, lying sources.

Each test starts its own devnet (``cli.devnet``) in a temporary directory and stops it
whatever happens. Clients use the public API only (``ledger.httpclient``); anything a
client accepts as verified is checked against the validator set of genesis.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
from nodeproc import (
    HarnessError,
    TamperingProxy,
    api,
    check_alive,
    deploy_token,
    devnet,
    fetch_chain,
    genesis_of,
    heights,
    status,
    wait_height,
)

from cli.devnet import Devnet
from ledger import codec
from ledger.block import Block
from ledger.client import Account, ProofError
from ledger.crypto import PrivateKey
from ledger.httpclient import Client
from ledger.tx import Transaction

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _key(n: int) -> PrivateKey:
    return PrivateKey(bytes([n]) * 32)


# ---------------------------------------------------------------------- commit and verified reads


def _forge_value(path: str, body: dict) -> dict | None:
    """A lying node: every state answer claims a balance of one million."""
    if path.startswith("/v1/state/") and body.get("value_hex") is not None:
        return {**body, "value_hex": codec.encode(1_000_000).hex(), "value": 1_000_000}
    return None


@pytest.mark.parametrize(("protocol", "validators"), [("bft", 4), ("raft", 3)])
def test_devnet_commits_a_transfer_and_the_observer_serves_a_verified_proof(tmp_path, protocol, validators):
    holder, recipient = _key(1), _key(2)
    with devnet(tmp_path / "net", protocol=protocol, validators=validators, observers=1) as net:
        genesis = genesis_of(net)
        vals, observer = net.validators(), net.observers()[0]

        async def body():
            await deploy_token(net, [holder], amount=1_000)
            account = Account(holder, chain_id=net.chain_id)
            async with api(vals[-1], timeout=30.0) as c:
                result = await c.submit(account.call("token", "transfer", [recipient.address.raw, 250]),
                                        wait=True, timeout_s=20)
            assert result.committed and result.ok, result
            [event] = result.receipt.events
            assert (event.contract, event.name) == ("token", "Transfer")
            assert dict(event.fields) == {"sender": holder.address.raw, "to": recipient.address.raw, "amount": 250}
            # Every validator holds it at the same place (a Raft follower learns the commit
            # index with the leader's next message, so this may take a heartbeat).
            await wait_height(vals, result.height, 30, "every validator at the transfer's height", net)
            for v in vals:
                async with api(v) as c:
                    seen = await c.tx(result.tx_id)
                assert (seen.status, seen.height, seen.index) == ("committed", result.height, result.index), v.name
            # The observer re-executed the block and proves balances under a certified root.
            await wait_height([observer], result.height, 60, "the observer at the transfer's height", net)
            async with api(observer) as c:
                got = await c.state("token", "balances", [recipient.address.raw], verify_with=genesis.validators,
                                    protocol=protocol)
                left = await c.state("token", "balances", [holder.address.raw], verify_with=genesis.validators,
                                     protocol=protocol)
                block = await c.block(result.height, verify_with=genesis.validators)
            assert (got, left) == (250, 750)
            assert result.tx_id in block.tx_ids
            return result

        asyncio.run(body())

        # A node that lies about a value: the plain read believes it, the verified read refuses it.
        with TamperingProxy([observer.url], _forge_value) as proxy:
            async def lied_to():
                async with Client(proxy.url, timeout=10.0) as c:
                    assert await c.state("token", "balances", [recipient.address.raw]) == 1_000_000
                    with pytest.raises(ProofError):
                        await c.state("token", "balances", [recipient.address.raw], verify_with=genesis.validators,
                                      protocol=protocol)

            asyncio.run(lied_to())
            assert proxy.tampered == 2


# ---------------------------------------------------------------------- overload


def test_validator_with_a_backlog_tells_clients_busy_and_keeps_committing(tmp_path, monkeypatch):
    """A node that already holds ``mempool.max_backlog`` waiting transactions refuses new
    submissions with ``busy`` (HTTP 503) before checking their signatures; what it took
    commits, and the refused ones go through once it has room."""
    monkeypatch.setenv("GRIDLEDGER_MEMPOOL_MAX_BACKLOG", "5")
    holder, recipient = _key(3), _key(4)
    with devnet(tmp_path / "net", protocol="raft", validators=3, observers=0) as net:

        async def body():
            await deploy_token(net, [holder], amount=1_000)
            account = Account(holder, chain_id=net.chain_id)
            transfers = [account.call("token", "transfer", [recipient.address.raw, 1]) for _ in range(12)]
            async with api(net.validators()[0], timeout=30.0) as c:
                # One request: nothing commits while its items are admitted, so the sixth finds five waiting.
                results = await c.submit_many(transfers)
                taken = [r for r in results if r.status != "rejected"]
                refused = [r for r in results if r.status == "rejected"]
                assert len(taken) == 5 and [t.tx_id for t in taken] == [t.tx_id for t in transfers[:5]], results
                assert {r.error[0] for r in refused} == {"busy"}, refused
                assert "retry shortly" in refused[0].error[1]
                for tx in transfers[:5]:
                    assert (await c.submit(tx, wait=True, timeout_s=20)).committed
                # With the backlog gone, the refused transfers are taken and commit (five at a time).
                for i in range(5, 12, 5):
                    done = await c.submit_many(transfers[i:i + 5], wait=True, timeout_s=20)
                    assert all(r.committed for r in done), done
                assert await c.state("token", "balances", [recipient.address.raw]) == 12

        asyncio.run(body())
        check_alive(net)


# ---------------------------------------------------------------------- restart of the whole devnet


def _cli(*args: str, timeout: float = 120.0) -> str:
    done = subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"gridledger {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_devnet_down_then_up_keeps_all_data_and_continues_from_the_same_height(tmp_path):
    root = tmp_path / "net"
    holder, recipient = _key(3), _key(4)
    Devnet.create(root, market=False)  # `up` starts the devnet this directory holds
    _cli("devnet", "up", "--dir", str(root))
    try:
        net = Devnet.load(root)
        genesis = genesis_of(net)
        observer = net.observers()[0]

        async def before():
            await deploy_token(net, [holder], amount=1_000)
            account = Account(holder, chain_id=net.chain_id)
            async with api(net.validators()[0], timeout=30.0) as c:
                results = [await c.submit(account.call("token", "transfer", [recipient.address.raw, 10 * (i + 1)]),
                                          wait=True, timeout_s=20) for i in range(3)]
            assert all(r.ok for r in results)
            top = max(r.height for r in results)
            await wait_height(net.nodes, top, 60, "every node at the last transfer")
            return results, min((await heights(net.nodes)).values())

        results, height = asyncio.run(before())
        chain_before = asyncio.run(fetch_chain(net.validators()[0], height))

        _cli("devnet", "down", "--dir", str(root))
        net = Devnet.load(root)
        assert all(n.pid is None for n in net.nodes)
        for node in net.nodes:  # a clean stop on SIGTERM, not a kill at the deadline
            assert '"node stopped"' in net.log_file(node).read_text().splitlines()[-1], node.name
        assert all(h is None for h in asyncio.run(heights(net.nodes)).values())

        _cli("devnet", "up", "--dir", str(root))
        net = Devnet.load(root)

        async def after():
            found = await heights(net.nodes)
            assert all(h is not None and h >= height for h in found.values()), (found, height)
            chains = await asyncio.gather(*(fetch_chain(n, height) for n in net.nodes))
            for chain in chains:
                assert chain.headers == chain_before.headers, chain.name
                assert chain.tx_ids == chain_before.tx_ids, chain.name
            for node in net.nodes:
                async with api(node) as c:
                    for r in results:
                        seen = await c.tx(r.tx_id)
                        assert (seen.status, seen.height, seen.index) == ("committed", r.height, r.index)
            # It continues: the account's nonce carries on and a new transfer commits above.
            account = Account(holder, chain_id=net.chain_id)
            async with api(net.validators()[1], timeout=30.0) as c:
                account.next_nonce = await c.next_nonce(holder.address)
                assert account.next_nonce == len(results)
                new = await c.submit(account.call("token", "transfer", [recipient.address.raw, 1]), wait=True,
                                     timeout_s=20)
            assert new.ok and new.height > height
            await wait_height([observer], new.height, 60, "the observer after the restart", net)
            async with api(observer) as c:
                got = await c.state("token", "balances", [recipient.address.raw], verify_with=genesis.validators)
            assert got == 10 + 20 + 30 + 1

        asyncio.run(after())
    finally:
        Devnet.load(root).stop(timeout_s=5.0)


# ---------------------------------------------------------------------- a validator that serves forged blocks


def _forger(mode: str):
    attacker = _key(9)

    def tamper(path: str, body: dict) -> dict | None:
        if not path.startswith("/v1/blocks/") or not body.get("block_hex"):
            return None
        block = Block.decode(bytes.fromhex(body["block_hex"]))
        if not block.txs:
            return None
        if mode == "header":
            # Another state root: the certificate no longer covers this header.
            forged = Block(dataclasses.replace(block.header, state_root=bytes(32)), block.txs)
        else:
            # The certified header with other transactions (correctly signed by someone else).
            tx = Transaction.create(attacker, chain_id=block.header.chain_id, nonce=0, contract="token",
                                    function="transfer", args=[attacker.address.raw, 1])
            forged = Block(block.header, (tx, *block.txs[1:]))
        return {**body, "block_hex": forged.encode().hex()}

    return tamper


def test_observer_refuses_forged_blocks_from_a_lying_validator_and_follows_the_honest_ones(tmp_path):
    holder = _key(5)
    proxies = {"observer-0": TamperingProxy([], _forger("header")), "observer-1": TamperingProxy([], _forger("txs"))}

    def configure(net: Devnet) -> None:
        # Each observer's first source lies (it relays whichever validator answers and
        # forges every block with transactions); the validators after it are honest.
        honest = [v.url for v in net.validators()]
        for name, proxy in proxies.items():
            proxy.targets = honest
            urls = ", ".join(f'"{u}"' for u in [proxy.start(), *honest])
            path = net.node_dir(net.node(name)) / "node.toml"
            path.write_text(re.sub(r"(?m)^urls = \[.*\]$", f"urls = [{urls}]", path.read_text()))

    try:
        with devnet(tmp_path / "net", validators=4, observers=2, configure=configure) as net:
            genesis = genesis_of(net)

            async def body():
                await deploy_token(net, [holder], amount=1_000)
                account = Account(holder, chain_id=net.chain_id)
                async with api(net.validators()[1], timeout=30.0) as c:
                    results = [await c.submit(account.call("token", "transfer", [holder.address.raw, 1]), wait=True,
                                              timeout_s=20) for _ in range(3)]
                top = max(r.height for r in results)
                try:
                    await wait_height(net.observers(), top, 60, "both observers past the forged blocks", net)
                except HarnessError:
                    check_alive(net)
                    raise
                reference = await fetch_chain(net.validators()[1], top)
                for observer in net.observers():
                    chain = await fetch_chain(observer, top)
                    assert chain.headers == reference.headers, observer.name
                    assert chain.tx_ids == reference.tx_ids, observer.name
                    st = await status(observer)
                    assert st["refused_blocks"] >= 1, (observer.name, st)
                    async with api(observer) as c:
                        assert await c.state("token", "balances", [holder.address.raw], verify_with=genesis.validators) == 1_000

            asyncio.run(body())
            check_alive(net)
    finally:
        for proxy in proxies.values():
            proxy.stop()
    for proxy in proxies.values():
        assert proxy.tampered >= 1
