"""Byzantine BFT replicas for the simulator: honest code that lies in one named way.

Each factory has the signature of ``make_replica``. The replica runs the honest
protocol inside and rewrites what it sends, signing its lies with its own key (it has
no other), so the honest replicas see exactly what a compromised validator could do:

* ``equivocating_leader``: as leader, sends one batch to half of the validators and a
  different one (another waiting batch, or the null batch) for the same sequence
  number to the other half;
* ``conflicting_votes``: sends its prepare and commit votes to half of the validators
  and votes for a different digest to the other half;
* ``bad_signatures``: every signature it sends is corrupted;
* ``replay``: honest, but also replays old messages it received or sent, to random
  validators, long after;
* ``silent``: receives everything, sends nothing;
* ``slow_leader``: as leader, holds each pre-prepare back for half the view timeout,
  so that with the commit round trip it stays just under it (the Aardvark/RBFT
  "slow primary").
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

from consensus.bft.messages import (
    CheckpointVote,
    CommitVote,
    MessageError,
    NewView,
    Prepare,
    PrePrepare,
    ViewChange,
    decode,
    encode,
    vote_payload,
)
from consensus.bft.replica import BftReplica
from consensus.types import (
    Action,
    Application,
    Broadcast,
    ConsensusConfig,
    Event,
    Send,
    SetTimer,
    Signer,
    Tick,
    Verifier,
)
from ledger.crypto import Kind

__all__ = ["BYZANTINE", "ByzantineReplica"]


class ByzantineReplica:
    """An honest :class:`BftReplica` whose outgoing messages pass through ``lie``."""

    def __init__(self, config: ConsensusConfig, signer: Signer, verifier: Verifier, app: Application,
                 behaviour: str) -> None:
        self.config = config
        self.behaviour = behaviour
        self.honest = BftReplica(config, signer, verifier, app)
        self.signer = signer
        self.app = app
        self.rng = random.Random(config.seed * 1_000_003 + int.from_bytes(signer.node_id[:8], "big"))
        self.now = 0
        self.history: list[bytes] = []  # for replay
        self.held: list[tuple[int, Action]] = []  # for the slow leader

    def step(self, event: Event) -> list[Action]:
        if isinstance(event, Tick):
            self.now = max(self.now, event.now)
        if self.behaviour == "replay" and hasattr(event, "payload"):
            self._remember(event.payload)
        actions = self.honest.step(event)
        out: list[Action] = []
        for action in actions:
            if isinstance(action, (Send, Broadcast)):
                out.extend(self._lie(action))
            else:
                out.append(action)
        if self.behaviour == "replay" and isinstance(event, Tick) and self.history:
            for _ in range(2):
                out.append(Send(self._random_peer(), self.rng.choice(self.history)))
        if self.behaviour == "slow_leader":
            due = [a for t, a in self.held if t <= self.now]
            self.held = [(t, a) for t, a in self.held if t > self.now]
            out.extend(due)
            if self.held:
                out.append(SetTimer(min(t for t, _ in self.held)))
        return out

    # ------------------------------------------------------------------ helpers

    def _peers(self) -> list[bytes]:
        return [v.node_key for v in self.honest.window_set if v.node_key != self.signer.node_id]

    def _random_peer(self) -> bytes:
        peers = self._peers()
        return self.rng.choice(peers) if peers else self.signer.node_id

    def _remember(self, payload: bytes) -> None:
        self.history.append(payload)
        if len(self.history) > 512:
            del self.history[: len(self.history) - 512]

    def _split(self, good: bytes, bad: bytes) -> list[Action]:
        peers = self._peers()
        half = len(peers) // 2
        return [Send(p, good) for p in peers[:half]] + [Send(p, bad) for p in peers[half:]]

    def _other_digest(self, digest: bytes) -> bytes:
        return bytes(b ^ 0x5A for b in digest)

    # ------------------------------------------------------------------ lies

    def _lie(self, action: Send | Broadcast) -> list[Action]:
        behaviour = self.behaviour
        if behaviour == "silent":
            return []
        if behaviour == "replay":
            self._remember(action.payload)
            return [action]
        try:
            message = decode(action.payload)
        except MessageError:
            return [action]
        if behaviour == "bad_signatures":
            return [dataclasses.replace(action, payload=encode(_corrupt(message)))]
        if behaviour == "equivocating_leader" and isinstance(message, PrePrepare) and isinstance(action, Broadcast):
            other = self._other_batch(message)
            digest = self.app.digest(other)
            signature = self.signer.sign(Kind.PRE_PREPARE, vote_payload(message.seq, message.view, digest))
            forged = PrePrepare(message.view, message.seq, digest, other, signature)
            return self._split(action.payload, encode(forged))
        if behaviour == "conflicting_votes" and isinstance(message, (Prepare, CommitVote)):
            kind = Kind.PREPARE if isinstance(message, Prepare) else Kind.COMMIT
            digest = self._other_digest(message.digest)
            signature = self.signer.sign(kind, vote_payload(message.seq, message.view, digest))
            forged = dataclasses.replace(message, digest=digest, signature=signature)
            return self._split(action.payload, encode(forged))
        if behaviour == "slow_leader" and isinstance(message, PrePrepare):
            # Half the timeout: with the commit round trip on top, just under it.
            hold = max(1, self.config.timeout_ticks // 2)
            self.held.append((self.now + hold, action))
            return []
        return [action]

    def _other_batch(self, message: PrePrepare) -> bytes:
        for digest, pending in self.honest.pending.items():
            if digest != message.digest:
                return pending.batch
        return b""  # the null batch: always acceptable, and different


def _corrupt(message):
    def flip(sig: bytes) -> bytes:
        return bytes([sig[0] ^ 1]) + sig[1:]

    if isinstance(message, (PrePrepare, Prepare, CommitVote, CheckpointVote, ViewChange, NewView)):
        return dataclasses.replace(message, signature=flip(message.signature))
    return message


def _factory(behaviour: str) -> Callable[[ConsensusConfig, Signer, Verifier, Application], ByzantineReplica]:
    def make(config: ConsensusConfig, signer: Signer, verifier: Verifier, app: Application) -> ByzantineReplica:
        return ByzantineReplica(config, signer, verifier, app, behaviour)

    make.__name__ = f"make_{behaviour}"
    return make


BYZANTINE = {
    name: _factory(name)
    for name in ("equivocating_leader", "conflicting_votes", "bad_signatures", "replay", "silent", "slow_leader")
}
