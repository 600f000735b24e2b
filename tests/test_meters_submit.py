"""Submission and recovery against the FakeNode: each reading ends on chain exactly once."""

import asyncio
from concurrent.futures import ThreadPoolExecutor

from ledger.crypto import PrivateKey
from ledger.log import get_logger
from meters.fakenode import FakeNode
from meters.nodeapi import NodeClient, build_submission
from meters.queue import ReadingStore
from meters.readings import Reading, TrackerState
from meters.status import Metrics
from meters.submit import SubmitSettings, Submitter

STATE = TrackerState(0, 0, 0, 0, 0, 0, 0)


def run(coro, timeout=30):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def wait_for(predicate, timeout=10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


class Bed:
    def __init__(self, tmp, node, key, **settings):
        self.tmp, self.node, self.key = tmp, node, key
        self.settings = SubmitSettings(chain_id="devnet", wait_ms=300, **settings)
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.store = ReadingStore(tmp / "queue.sqlite3")
        self.task = None

    async def db(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def queue(self, periods, energy=5):
        readings = [Reading("m", p, energy + p, 0) for p in periods]
        self.store.record([("m", STATE, readings)])
        return readings

    async def start(self):
        self.client = NodeClient(self.node.url, timeout_s=2)
        self.sub = Submitter(store=self.store, db=self.db, node=self.client, keys={"m": self.key},
                             settings=self.settings, metrics=Metrics(), log=get_logger(test="submit"))
        await self.sub.load()
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.sub.run(self.stop))
        return self.sub

    async def crash(self):
        """Stop without a goodbye: only what the store holds survives."""
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.client.close()

    async def close(self):
        if self.task is not None and not self.task.done():
            self.stop.set()
            await self.task
            await self.client.close()
        self.store.close()
        self.pool.shutdown()

    def chain(self):
        return self.node.readings_of(self.key.public_key.raw)


def test_committed_transaction_whose_answer_was_lost_is_confirmed_not_resent(tmp_path):
    async def body():
        node = FakeNode("devnet", block_interval_s=0.02)
        await node.start()
        bed = Bed(tmp_path, node, PrivateKey.generate())
        bed.queue([10, 11, 12])
        node.hold_responses = True  # commit, but never answer
        await bed.start()
        await wait_for(lambda: len(bed.chain()) == 3)
        await bed.crash()
        node.release_responses()
        posts = node.posts
        sub = await bed.start()
        await wait_for(lambda: sub.pending() == 0)
        assert node.posts == posts  # asked about it, did not send it again
        assert sorted(bed.chain()) == [10, 11, 12] and node.duplicate_refusals == 0
        assert bed.store.depth() == 0
        await bed.close()
        await node.stop()

    run(body())


def test_batch_with_a_period_already_on_chain_is_split_and_nothing_lost(tmp_path):
    async def body():
        node = FakeNode("devnet", block_interval_s=0.02)
        await node.start()
        key = PrivateKey.generate()
        bed = Bed(tmp_path, node, key)
        readings = bed.queue([20, 21, 22])
        # Period 21 reached the chain earlier (say, by a gateway whose queue was restored from a backup).
        earlier = build_submission(key, [readings[1]], chain_id="devnet", nonce=0, gas_limit=10**6, expiry=2**63 - 1)
        client = NodeClient(node.url)
        assert (await client.submit(earlier.encode(), wait_ms=1000)).status == "committed"
        await client.close()
        sub = await bed.start()
        await wait_for(lambda: sub.pending() == 0)
        assert bed.chain() == {20: (25, 0), 21: (26, 0), 22: (27, 0)}
        assert node.duplicate_refusals == 2  # the batch, then period 21 alone
        assert sub.metrics.value("readings_already_on_chain_total") == 1
        assert sub.metrics.value("readings_committed_total") == 2
        await bed.close()
        await node.stop()

    run(body())


def test_transaction_the_node_forgot_is_resent_with_the_same_bytes(tmp_path):
    async def body():
        node = FakeNode("devnet", block_interval_s=0.02)
        await node.start()
        bed = Bed(tmp_path, node, PrivateKey.generate())
        bed.queue([30])
        node.hold_blocks = True
        sub = await bed.start()
        await wait_for(lambda: node.mempool)
        first_id = node.mempool[0].tx.tx_id
        await node.go_down(lose_mempool=True)  # a node restart empties its mempool
        await node.come_up()
        node.hold_blocks = False
        await wait_for(lambda: sub.pending() == 0)
        assert bed.chain()[30][:1] == (35,)
        assert node.readings[(bed.key.public_key.raw, 30)][2] == first_id
        await bed.close()
        await node.stop()

    run(body())


def test_expired_transaction_is_signed_again_at_a_fresh_nonce(tmp_path):
    async def body():
        node = FakeNode("devnet", block_interval_s=0.02)
        await node.start()
        bed = Bed(tmp_path, node, PrivateKey.generate(), expiry_blocks=3)
        bed.queue([40, 41])
        node.hold_blocks = True
        sub = await bed.start()
        await wait_for(lambda: node.mempool)
        first_id = node.mempool[0].tx.tx_id
        await bed.crash()
        await node.go_down(lose_mempool=True)
        node.height += 10  # the chain moved past the transaction's expiry meanwhile
        await node.come_up()
        node.hold_blocks = False
        sub = await bed.start()
        await wait_for(lambda: sub.pending() == 0)
        assert sorted(bed.chain()) == [40, 41]
        assert node.readings[(bed.key.public_key.raw, 40)][2] != first_id
        await bed.close()
        await node.stop()

    run(body())


def test_nonce_taken_by_another_transaction_is_refetched(tmp_path):
    async def body():
        node = FakeNode("devnet", block_interval_s=0.02)
        await node.start()
        key = PrivateKey.generate()
        bed = Bed(tmp_path, node, key)
        bed.queue([50])
        node.hold_blocks = True
        sub = await bed.start()
        await wait_for(lambda: node.mempool)
        await bed.crash()
        # The gateway's transaction is lost, and nonce 0 goes to another reading meanwhile.
        await node.go_down(lose_mempool=True)
        await node.come_up()
        other = build_submission(key, [Reading("m", 49, 1, 0)], chain_id="devnet", nonce=0, gas_limit=10**6,
                                 expiry=2**63 - 1)
        node.hold_blocks = False
        client = NodeClient(node.url)
        assert (await client.submit(other.encode(), wait_ms=1000)).status == "committed"
        await client.close()
        sub = await bed.start()
        await wait_for(lambda: sub.pending() == 0)
        assert sorted(bed.chain()) == [49, 50]
        await bed.close()
        await node.stop()

    run(body())


def test_readings_wait_out_an_unreachable_node(tmp_path):
    async def body():
        node = FakeNode("devnet", block_interval_s=0.02)
        await node.start()
        url = node.url
        await node.go_down()
        bed = Bed(tmp_path, node, PrivateKey.generate())
        bed.node = type("Down", (), {"url": url})()
        bed.queue(range(60, 70))
        sub = await bed.start()
        await asyncio.sleep(1.0)
        assert sub.node_up is False and sub.pending() == 10
        bed.node = node
        await node.come_up()
        await wait_for(lambda: sub.pending() == 0, timeout=10)
        assert sorted(bed.chain()) == list(range(60, 70))
        await bed.close()
        await node.stop()

    run(body())
