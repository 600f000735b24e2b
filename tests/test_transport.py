"""The peer transport: wire frames, the handshake, and PeerMesh over real loopback sockets.

Network tests run real aiohttp servers and clients on 127.0.0.1 with ephemeral ports.
They wait for conditions with a generous liveness bound (never a timing assertion).
"""

import asyncio
import base64
import contextlib
import random
import ssl

import aiohttp
import pytest
import structlog
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import codec
from ledger.crypto import Kind, PrivateKey
from node.peer_protocol import (
    PEER_PATH,
    AcceptorHandshake,
    DialerHandshake,
    FrameError,
    HandshakeRefused,
    TransportError,
    decode_data,
    encode_data,
    transcript,
)
from node.tls import PeerTls, make_node_certificate, server_context
from node.transport import MeshLimits, PeerMesh, backoff_seconds

CHAIN = "ch/test"
# Sorted by node key, so KEYS[0] is the lowest key (the one that dials).
KEYS = sorted((PrivateKey(bytes([i + 1]) * 32) for i in range(6)), key=lambda k: k.public_key.raw)
IDS = [k.public_key.raw for k in KEYS]
CERTS = {k.public_key.raw: make_node_certificate(k, f"validator-{i}")[0] for i, k in enumerate(KEYS)}
FAST = MeshLimits(
    backoff_initial_ms=20,
    backoff_max_ms=200,
    handshake_timeout_ms=3_000,
    close_timeout_ms=300,
    heartbeat_ms=None,
    dial_fallback_ms=None,
)
LIVENESS = 15.0  # seconds: how long a condition may take on a loaded CI machine


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def eventually(predicate, what):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LIVENESS
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.01)


def tls_for(key, trusted_ids):
    return PeerTls.for_validator(key, CERTS[key.public_key.raw], {i: CERTS[i] for i in trusted_ids})


class Node:
    """A validator's transport with an inbox; ``hold`` (an Event) stalls its consumer."""

    def __init__(self, key, allowed, *, tls=False, limits=FAST, port=0, hold=None):
        self.key = key
        self.id = key.public_key.raw
        self.inbox = []
        self.hold = hold
        self.tls = tls_for(key, allowed) if tls else None
        self.mesh = PeerMesh(
            key, CHAIN, {i: None for i in allowed}, tls=self.tls, on_message=self._on_message,
            limits=limits, listen=("127.0.0.1", port), rng=random.Random(7),
        )

    async def _on_message(self, sender, payload):
        if self.hold is not None:
            await self.hold.wait()
        self.inbox.append((sender, payload))

    @property
    def url(self):
        return f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self.mesh.listen_port}{PEER_PATH}"

    def got(self, sender):
        return [p for s, p in self.inbox if s == sender.id]

    def peer(self, other):
        """This node's status entry for ``other`` (a Node or a node key)."""
        key = other if isinstance(other, bytes) else other.id
        return next(p for p in self.mesh.status()["peers"] if p["node_key"] == key.hex())


@contextlib.asynccontextmanager
async def cluster(keys, *, allowed=None, tls=False, limits=FAST, hold=None):
    """Start one node per key, tell each the others' URLs, wait for the full mesh."""
    allowed = allowed or [k.public_key.raw for k in keys]
    nodes = [Node(k, allowed, tls=tls, limits=limits, hold=hold) for k in keys]
    try:
        for n in nodes:
            await n.mesh.start()
        urls = {n.id: n.url for n in nodes}
        for n in nodes:
            n.mesh.set_peers({i: urls.get(i) for i in allowed})
        await eventually(
            lambda: all(n.mesh.connected() == {m.id for m in nodes} - {n.id} for n in nodes), "the mesh is full"
        )
        yield nodes
    finally:
        if hold is not None:
            hold.set()
        for n in nodes:
            await n.mesh.stop()


class RawPeer:
    """A hand-driven peer connection, for sending what a PeerMesh never would."""

    def __init__(self, key, url, *, ssl=None, chain=CHAIN):
        self.key, self.url, self.ssl, self.chain = key, url, ssl, chain
        self.http = aiohttp.ClientSession()

    async def connect(self):
        kwargs = {"ssl": self.ssl} if self.ssl is not None else {}
        return await self.http.ws_connect(self.url, max_msg_size=0, **kwargs)

    async def handshake(self, ws, acceptor_key, *, tamper_proof=False):
        """Run the dialer's side; returns (hello, proof) as sent."""
        tls = self.key.public_key.raw if self.ssl is not None else None
        dialer = DialerHandshake(
            self.key, self.chain, acceptor_key, local_tls_key=tls, peer_tls_key=acceptor_key if tls else None
        )
        hello = dialer.hello()
        await ws.send_bytes(hello)
        proof = dialer.on_welcome((await ws.receive()).data)
        if tamper_proof:
            proof = proof[:-1] + bytes([proof[-1] ^ 1])
        await ws.send_bytes(proof)
        return hello, proof

    async def close(self):
        await self.http.close()


async def closed_with(ws):
    """Read until the connection closes; returns (close code, reason text)."""
    while True:
        msg = await asyncio.wait_for(ws.receive(), LIVENESS)
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
            return ws.close_code, msg.extra or ""


def events(logs, name):
    return [e for e in logs if e["event"] == name]


# ---------------------------------------------------------------- frames


@settings(max_examples=200)
@given(st.one_of(st.binary(max_size=300), st.integers(0, 70_000).map(lambda n: b"\x07" * n)))
def test_data_frame_is_the_canonical_encoding_of_type_and_payload(payload):
    frame = encode_data(payload)
    assert frame == codec.encode([4, payload])
    assert decode_data(frame, len(payload)) == payload


def _mutations():
    valid = st.one_of(st.binary(max_size=40), st.integers(250, 70_000).map(lambda n: b"\x01" * n)).map(encode_data)
    return st.one_of(
        st.binary(max_size=64),
        valid,
        st.tuples(valid, st.integers(0, 8), st.integers(0, 255)).map(
            lambda t: t[0][: t[1]] + bytes([t[2]]) + t[0][t[1] + 1 :]
        ),
        st.tuples(valid, st.integers(0, 8)).map(lambda t: t[0][: len(t[0]) - t[1]]),
        st.tuples(valid, st.binary(min_size=1, max_size=3)).map(lambda t: t[0] + t[1]),
        st.binary(max_size=300).map(lambda p: b"\x92\x04\xc5" + len(p).to_bytes(2, "big") + p),
        st.binary(max_size=300).map(lambda p: b"\x92\x04\xc6" + len(p).to_bytes(4, "big") + p),
    )


@settings(max_examples=400)
@given(_mutations())
def test_data_frame_decoder_accepts_exactly_what_the_canonical_codec_accepts(frame):
    try:
        value = codec.decode(frame, max_depth=1)
        expected = value[1] if (type(value) is list and len(value) == 2 and value[0] == 4 and type(value[1]) is bytes) else None
    except codec.CodecError:
        expected = None
    try:
        got = decode_data(frame, 1 << 20)
    except FrameError:
        got = None
    assert got == expected


def test_data_frame_decoder_refuses_a_payload_above_the_limit():
    with pytest.raises(FrameError, match="exceeds the limit of 9"):
        decode_data(encode_data(b"x" * 10), 9)


# ---------------------------------------------------------------- handshake (sans-IO)


def _pair(dialer_key=KEYS[0], acceptor_key=KEYS[1], allowed=IDS, tls=False, **kw):
    d_tls = dialer_key.public_key.raw if tls else None
    a_tls = acceptor_key.public_key.raw if tls else None
    dialer = DialerHandshake(dialer_key, kw.get("dialer_chain", CHAIN), acceptor_key.public_key.raw,
                             local_tls_key=d_tls, peer_tls_key=a_tls)
    acceptor = AcceptorHandshake(acceptor_key, kw.get("acceptor_chain", CHAIN), lambda k: k in allowed,
                                 local_tls_key=a_tls, peer_tls_key=kw.get("client_cert_key", d_tls))
    return dialer, acceptor


@pytest.mark.parametrize("tls", [False, True])
def test_handshake_authenticates_both_keys(tls):
    dialer, acceptor = _pair(tls=tls)
    proof = dialer.on_welcome(acceptor.on_hello(dialer.hello()))
    assert acceptor.on_proof(proof) == KEYS[0].public_key.raw


def _refusal(case):
    if case == "unknown_key":
        dialer, acceptor = _pair(allowed=IDS[1:])
        acceptor.on_hello(dialer.hello())
    elif case == "wrong_chain":
        dialer, acceptor = _pair(dialer_chain="ch/other")
        acceptor.on_hello(dialer.hello())
    elif case == "protocol_version":
        dialer, acceptor = _pair()
        acceptor.on_hello(codec.encode([1, 2, CHAIN, IDS[0], b"\x00" * 32]))
    elif case == "malformed":
        dialer, acceptor = _pair()
        acceptor.on_hello(codec.encode([1, 1, CHAIN, IDS[0]]))
    elif case == "self_connection":
        dialer, acceptor = _pair(dialer_key=KEYS[1])
        acceptor.on_hello(dialer.hello())
    elif case == "certificate_mismatch":
        # A client certificate of one validator, a HELLO claiming another.
        dialer, acceptor = _pair(tls=True, client_cert_key=IDS[2])
        acceptor.on_hello(dialer.hello())
    elif case == "unexpected_key":
        # The dialer meant to reach KEYS[2] but KEYS[1] answered.
        dialer = DialerHandshake(KEYS[0], CHAIN, IDS[2], local_tls_key=None, peer_tls_key=None)
        acceptor = AcceptorHandshake(KEYS[1], CHAIN, lambda k: True, local_tls_key=None, peer_tls_key=None)
        dialer.on_welcome(acceptor.on_hello(dialer.hello()))
    elif case == "reflected_signature":
        # The dialer returns the acceptor's own signature as its proof.
        dialer, acceptor = _pair()
        welcome = acceptor.on_hello(dialer.hello())
        acceptor.on_proof(codec.encode([3, codec.decode(welcome)[5]]))
    elif case == "replayed_welcome":
        # A WELCOME recorded from one connection, replayed into another: the new
        # dialer's challenge differs, so the signature no longer verifies.
        old_dialer, acceptor = _pair()
        welcome = acceptor.on_hello(old_dialer.hello())
        new_dialer, _ = _pair()
        new_dialer.on_welcome(welcome)
    elif case == "tls_terminated_between_peers":
        # The acceptor saw no TLS (a proxy ended it) while the dialer did.
        dialer = DialerHandshake(KEYS[0], CHAIN, IDS[1], local_tls_key=IDS[0], peer_tls_key=IDS[1])
        acceptor = AcceptorHandshake(KEYS[1], CHAIN, lambda k: True, local_tls_key=None, peer_tls_key=None)
        dialer.on_welcome(acceptor.on_hello(dialer.hello()))


@pytest.mark.parametrize(
    "case, reason",
    [
        ("unknown_key", "unknown_key"),
        ("wrong_chain", "wrong_chain"),
        ("protocol_version", "protocol_version"),
        ("malformed", "malformed"),
        ("self_connection", "self_connection"),
        ("certificate_mismatch", "certificate_mismatch"),
        ("unexpected_key", "unexpected_key"),
        ("reflected_signature", "bad_signature"),
        ("replayed_welcome", "bad_signature"),
        ("tls_terminated_between_peers", "bad_signature"),
    ],
)
def test_handshake_refuses(case, reason):
    with pytest.raises(HandshakeRefused) as refused:
        _refusal(case)
    assert refused.value.reason == reason


def test_handshake_signature_is_bound_to_the_chain():
    payload = transcript("dialer", CHAIN, IDS[0], IDS[1], b"a" * 32, b"b" * 32, None, None)
    signature = KEYS[0].sign(CHAIN, Kind.HANDSHAKE, payload)
    from ledger.crypto import verify_signature

    assert verify_signature(IDS[0], CHAIN, Kind.HANDSHAKE, payload, signature)
    assert not verify_signature(IDS[0], "ch/other", Kind.HANDSHAKE, payload, signature)
    assert not verify_signature(IDS[0], CHAIN, Kind.TX, payload, signature)


# ---------------------------------------------------------------- configuration


def test_backoff_doubles_to_its_cap_with_jitter_replayed_by_the_seed():
    limits = MeshLimits(backoff_initial_ms=100, backoff_max_ms=1_000)
    a = [backoff_seconds(n, limits, random.Random(3)) for n in range(8)]
    assert a == [backoff_seconds(n, limits, random.Random(3)) for n in range(8)]
    for failures, delay in enumerate(a):
        full = min(1.0, 0.1 * 2**failures)
        assert full / 2 <= delay <= full


def test_configuration_errors_are_refused_with_a_clear_message():
    async def noop(sender, payload):
        pass

    with pytest.raises(TransportError, match="must be wss://"):
        PeerMesh(KEYS[0], CHAIN, {IDS[1]: "ws://h:1/peer/v1"}, tls=tls_for(KEYS[0], IDS), on_message=noop)
    with pytest.raises(TransportError, match="must be ws://"):
        PeerMesh(KEYS[0], CHAIN, {IDS[1]: "wss://h:1/peer/v1"}, tls=None, on_message=noop)
    with pytest.raises(TransportError, match="32 bytes"):
        PeerMesh(KEYS[0], CHAIN, {b"short": None}, tls=None, on_message=noop)
    with pytest.raises(TransportError, match="queue_bytes must hold"):
        MeshLimits(max_payload_bytes=1000, queue_bytes=1000)
    with pytest.raises(TransportError, match="positive integer"):
        MeshLimits(queue_frames=0)
    mesh = PeerMesh(KEYS[0], CHAIN, {IDS[1]: None}, tls=None, on_message=noop)
    with pytest.raises(TransportError, match="payload is bytes"):
        mesh.send(IDS[1], "text")
    assert mesh.send(IDS[5], b"x") is False
    assert mesh.status()["unknown_destination"] == 1


# ---------------------------------------------------------------- the mesh


def test_four_validators_form_a_full_mesh_with_one_connection_per_pair_dialed_by_the_lower_key():
    async def scenario():
        async with cluster(KEYS[:4]) as nodes:
            for n in nodes:
                for other in nodes:
                    if other is not n:
                        direction = n.peer(other)["direction"]
                        assert direction == ("out" if n.id < other.id else "in")
                        assert n.peer(other)["sessions"] == 1
            for i in range(20):
                for n in nodes:
                    for other in nodes:
                        if other is not n:
                            assert n.mesh.send(other.id, b"%d to %d" % (i, nodes.index(other)))
            for n in nodes:
                assert n.mesh.broadcast(b"broadcast %d" % nodes.index(n)) == 3
            await eventually(lambda: all(len(n.inbox) == 3 * 21 for n in nodes), "every message arrived")
            for n in nodes:
                me = nodes.index(n)
                for other in nodes:
                    if other is not n:
                        expected = [b"%d to %d" % (i, me) for i in range(20)] + [b"broadcast %d" % nodes.index(other)]
                        assert n.got(other) == expected

    run(scenario())


def test_mutual_tls_with_pinned_certificates_carries_messages():
    async def scenario():
        async with cluster(KEYS[:3], tls=True) as nodes:
            assert all(n.mesh.status()["tls"] for n in nodes)
            for n in nodes:
                n.mesh.broadcast(b"over tls from " + n.id)
            await eventually(lambda: all(len(n.inbox) == 2 for n in nodes), "broadcasts arrived")
            for n in nodes:
                assert sorted(p for _, p in n.inbox) == sorted(b"over tls from " + m.id for m in nodes if m is not n)

    run(scenario())


def test_a_node_whose_certificate_is_not_pinned_is_refused_at_tls():
    async def scenario():
        async with cluster(KEYS[:2], tls=True) as (a, b):
            outsider = KEYS[5]
            # The outsider pins everyone and lists itself, but the validators never pinned it.
            intruder = Node(outsider, IDS[:2] + [outsider.public_key.raw], tls=True,
                            limits=MeshLimits(**{**FAST.__dict__, "dial_fallback_ms": 0}))
            with structlog.testing.capture_logs() as logs:
                await intruder.mesh.start()
                intruder.mesh.set_peers({a.id: a.url})
                await eventually(lambda: intruder.peer(a)["dial_failures"] >= 2, "the intruder was refused twice")
                await intruder.mesh.stop()
            assert a.mesh.connected() == {b.id} and a.inbox == []
            # TLS stopped it: the node's handshake never ran, so nothing was refused there.
            assert a.mesh.status()["refused"] == {}
            assert not [e for e in events(logs, "peer refused") if e.get("node") == a.id.hex()[:16]]

    run(scenario())


def test_a_pinned_certificate_whose_key_is_not_a_validator_is_refused_at_the_handshake_and_logged():
    async def scenario():
        # Both pin KEYS[2]'s certificate, but KEYS[2] is not in the validator set.
        former = KEYS[2]
        trusted = IDS[:3]
        a = Node(KEYS[0], IDS[:2], tls=True)
        a.tls.trust({former.public_key.raw: CERTS[former.public_key.raw]})
        with structlog.testing.capture_logs() as logs:
            await a.mesh.start()
            raw = RawPeer(former, a.url, ssl=tls_for(former, trusted).client)
            try:
                ws = await raw.connect()
                await ws.send_bytes(DialerHandshake(former, CHAIN, a.id, local_tls_key=former.public_key.raw,
                                                    peer_tls_key=a.id).hello())
                code, reason = await closed_with(ws)
            finally:
                await raw.close()
                await a.mesh.stop()
        assert code == 4001 and reason.startswith("unknown_key")
        assert a.mesh.status()["refused"] == {"unknown_key": 1}
        refused = events(logs, "peer refused")
        assert refused and refused[0]["reason"] == "unknown_key" and refused[0]["claimed"] == former.public_key.hex()[:16]

    run(scenario())


@pytest.mark.parametrize("attack", ["wrong_signature", "someone_elses_key"])
def test_a_valid_certificate_with_a_wrong_handshake_proof_is_refused(attack):
    async def scenario():
        async with cluster(KEYS[:3], tls=True) as (a, b, c):
            holder = KEYS[1]  # holds b's valid certificate and key
            raw = RawPeer(holder, a.url, ssl=b.tls.client)
            try:
                ws = await raw.connect()
                if attack == "wrong_signature":
                    await raw.handshake(ws, a.id, tamper_proof=True)
                else:  # claims to be c while showing b's certificate
                    await ws.send_bytes(codec.encode([1, 1, CHAIN, c.id, b"\x01" * 32]))
                code, reason = await closed_with(ws)
            finally:
                await raw.close()
            expected = "bad_signature" if attack == "wrong_signature" else "certificate_mismatch"
            assert code == 4001 and reason.startswith(expected)
            assert a.mesh.status()["refused"] == {expected: 1}
            # The real b and c are untouched.
            assert a.mesh.connected() == {b.id, c.id} and a.peer(b)["sessions"] == 1

    run(scenario())


@pytest.mark.parametrize("attack", ["replayed_proof", "wrong_chain", "unknown_key"])
def test_handshake_refusals_close_the_connection_and_are_counted(attack):
    async def scenario():
        # KEYS[3] is an allowed validator that is not running; the test speaks for it.
        async with cluster(KEYS[:2], allowed=IDS[:4]) as (a, b):
            speaker = KEYS[3] if attack != "unknown_key" else KEYS[5]
            raw = RawPeer(speaker, a.url, chain="ch/other" if attack == "wrong_chain" else CHAIN)
            try:
                if attack == "replayed_proof":
                    first = await raw.connect()
                    hello, proof = await raw.handshake(first, a.id)
                    await first.close()
                    await eventually(lambda: IDS[3] not in a.mesh.connected(), "the first session ended")
                    ws = await raw.connect()
                    await ws.send_bytes(hello)
                    await ws.receive()  # a fresh WELCOME with a fresh challenge
                    await ws.send_bytes(proof)
                else:
                    ws = await raw.connect()
                    await ws.send_bytes(DialerHandshake(speaker, raw.chain, a.id, local_tls_key=None,
                                                        peer_tls_key=None).hello())
                code, reason = await closed_with(ws)
            finally:
                await raw.close()
            expected = {"replayed_proof": "bad_signature"}.get(attack, attack)
            assert code == 4001 and reason.startswith(expected)
            assert a.mesh.status()["refused"] == {expected: 1}
            assert a.inbox == []

    run(scenario())


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xc1",  # not msgpack
        b"\x93\x04\xc4\x01x\x00",  # an array of the wrong length
        codec.encode([4, "text, not bytes"]),
        b"\x92\x04\xc5\x00\x03abc",  # non-canonical length header
        b"\x92\x04\xc4\x05abc",  # truncated
        codec.encode([1, 1, CHAIN, IDS[3], b"\x00" * 32]),  # a HELLO after the handshake
        "a text frame",
    ],
)
def test_a_peer_sending_garbage_is_disconnected_and_the_others_keep_exchanging(garbage):
    async def scenario():
        async with cluster(KEYS[:3], allowed=IDS[:4]) as nodes:
            a, b, c = nodes
            raw = RawPeer(KEYS[3], a.url)
            try:
                with structlog.testing.capture_logs() as logs:
                    ws = await raw.connect()
                    await raw.handshake(ws, a.id)
                    await eventually(lambda: IDS[3] in a.mesh.connected(), "the garbage sender is connected")
                    if isinstance(garbage, str):
                        await ws.send_str(garbage)
                    else:
                        await ws.send_bytes(garbage)
                    code, _ = await closed_with(ws)
            finally:
                await raw.close()
            assert code == 4002
            assert [e["peer"] for e in events(logs, "peer sent garbage, disconnecting")] == [IDS[3].hex()[:16]]
            assert a.peer(IDS[3])["garbage"] == 1 and a.inbox == []
            for n in nodes:
                n.mesh.broadcast(b"still here " + n.id)
            await eventually(lambda: all(len(n.inbox) == 2 for n in nodes), "the others keep exchanging")
            assert a.mesh.connected() == {b.id, c.id}

    run(scenario())


async def raw_socket_peer(key, port):
    """A peer speaking websocket by hand over a bare TCP socket, handshake included."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET {PEER_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {base64.b64encode(bytes(16)).decode()}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    dialer = DialerHandshake(key, CHAIN, IDS[0], local_tls_key=None, peer_tls_key=None)
    writer.write(client_frame(dialer.hello()))
    writer.write(client_frame(dialer.on_welcome((await server_frame(reader))[1])))
    return reader, writer


def client_frame(payload, first_byte=0x82, masked=True):
    """A websocket frame as a client sends it (masked with a zero key, so the bytes read plainly)."""
    n = len(payload)
    length = bytes([n]) if n < 126 else bytes([126]) + n.to_bytes(2, "big")
    length = bytes([length[0] | (0x80 if masked else 0)]) + length[1:]
    return bytes([first_byte]) + length + (bytes(4) if masked else b"") + payload


async def server_frame(reader):
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await reader.readexactly(8), "big")
    return b0 & 0x0F, await reader.readexactly(n)


@pytest.mark.parametrize(
    "broken",
    [
        client_frame(b"", first_byte=0x83),  # reserved opcode 3
        client_frame(b"x", first_byte=0xC2),  # RSV1 set without a negotiated extension
        client_frame(b"\xff\xfe", first_byte=0x81),  # a text frame that is not UTF-8
        client_frame(b"x" * 200, first_byte=0x89),  # a ping longer than control frames may be
    ],
)
def test_broken_websocket_framing_counts_as_garbage_and_disconnects_only_that_peer(broken):
    async def scenario():
        async with cluster(KEYS[:2], allowed=IDS[:4]) as (a, b):
            with structlog.testing.capture_logs() as logs:
                reader, writer = await raw_socket_peer(KEYS[3], a.mesh.listen_port)
                await eventually(lambda: IDS[3] in a.mesh.connected(), "the raw peer is connected")
                writer.write(broken)
                opcode, _ = await asyncio.wait_for(server_frame(reader), LIVENESS)
                assert opcode == 0x8  # the node closed the connection
                writer.close()
            assert events(logs, "peer sent garbage, disconnecting")[0]["peer"] == IDS[3].hex()[:16]
            await eventually(lambda: IDS[3] not in a.mesh.connected(), "the garbage sender is gone")
            assert a.peer(IDS[3])["garbage"] == 1
            a.mesh.send(b.id, b"unaffected")
            await eventually(lambda: b.got(a) == [b"unaffected"], "the other peer is unaffected")

    run(scenario())


def test_an_oversized_frame_is_dropped_and_logged_and_never_sent_by_a_mesh():
    async def scenario():
        limits = MeshLimits(**{**FAST.__dict__, "max_payload_bytes": 1024, "queue_bytes": 64 * 1024})
        async with cluster(KEYS[:2], allowed=IDS[:4], limits=limits) as (a, b):
            # A mesh refuses to send what its peers would refuse to receive.
            with structlog.testing.capture_logs() as logs:
                assert a.mesh.send(b.id, b"x" * 1025) is False
                assert a.mesh.broadcast(b"x" * 1025) == 0
            assert a.peer(b)["oversized_sent"] == 2 and events(logs, "oversized payload not sent")
            assert a.mesh.send(b.id, b"y" * 1024)
            await eventually(lambda: b.got(a) == [b"y" * 1024], "a payload at the limit arrived")
            # A peer that sends one anyway: the frame is dropped and the connection closed.
            raw = RawPeer(KEYS[3], a.url)
            try:
                with structlog.testing.capture_logs() as logs:
                    ws = await raw.connect()
                    await raw.handshake(ws, a.id)
                    await ws.send_bytes(encode_data(b"z" * 1025))
                    code, _ = await closed_with(ws)
                assert code == 1009
                dropped = events(logs, "oversized frame dropped, connection closed")
                assert dropped and dropped[0]["peer"] == IDS[3].hex()[:16]
                assert a.peer(IDS[3])["oversized_received"] == 1
                # It may reconnect and carry on with frames in bounds.
                ws = await raw.connect()
                await raw.handshake(ws, a.id)
                await ws.send_bytes(encode_data(b"ok"))
                await eventually(lambda: (IDS[3], b"ok") in a.inbox, "the reconnected peer is heard")
                assert not any(len(p) > 1024 for _, p in a.inbox)
                await ws.close()
            finally:
                await raw.close()

    run(scenario())


@pytest.mark.parametrize("restarting", ["acceptor", "dialer"])
def test_connection_is_reestablished_after_a_peer_restarts_on_the_same_port(restarting):
    async def scenario():
        async with cluster(KEYS[:2]) as (low, high):
            gone, stays = (high, low) if restarting == "acceptor" else (low, high)
            port = gone.mesh.listen_port
            await gone.mesh.stop()
            await eventually(lambda: not stays.mesh.connected(), "the survivor noticed")
            assert stays.mesh.send(gone.id, b"queued while you were away")
            back = Node(gone.key, IDS[:2], port=port)
            await back.mesh.start()
            try:
                back.mesh.set_peers({stays.id: stays.url})
                await eventually(lambda: stays.mesh.connected() == {gone.id}, "the peer is back")
                assert back.mesh.listen_port == port
                await eventually(lambda: back.got(stays) == [b"queued while you were away"], "the queue was kept")
                back.mesh.send(stays.id, b"hello again")
                await eventually(lambda: stays.got(gone) == [b"hello again"], "the restarted peer is heard")
                assert stays.peer(gone)["reconnects"] == 1
            finally:
                await back.mesh.stop()

    run(scenario())


def test_a_stalled_peer_loses_its_oldest_queued_frames_without_blocking_the_others():
    async def scenario():
        hold = asyncio.Event()
        limits = MeshLimits(**{**FAST.__dict__, "max_payload_bytes": 64 * 1024, "queue_frames": 8,
                               "queue_bytes": 8 * (64 * 1024 + 16)})
        async with cluster(KEYS[:2], limits=limits) as (a, b):
            stalled = Node(KEYS[2], IDS[:3], limits=limits, hold=hold)
            await stalled.mesh.start()
            try:
                for n in (a, b):
                    n.mesh.set_peers({a.id: a.url, b.id: b.url, stalled.id: stalled.url})
                stalled.mesh.set_peers({a.id: a.url, b.id: b.url})
                await eventually(lambda: stalled.id in a.mesh.connected(), "the stalled peer is connected")
                total = 400  # 25 MiB: more than the socket buffers on both sides hold
                for i in range(total):
                    assert a.mesh.broadcast(i.to_bytes(4, "big") + bytes(64 * 1024 - 4)) == 2
                    await asyncio.sleep(0)  # let the writers run, as a node's event loop would
                await eventually(lambda: len(b.got(a)) == total, "the healthy peer received everything")
                assert [int.from_bytes(p[:4], "big") for p in b.got(a)] == list(range(total))
                status = a.peer(stalled)
                assert status["dropped"] > 0 and status["queue_frames"] <= 8
                assert a.peer(b)["dropped"] == 0
                hold.set()
                await eventually(lambda: any(p[:4] == (total - 1).to_bytes(4, "big") for p in stalled.got(a)),
                                 "the newest frame reached the stalled peer once it recovered")
                seen = [int.from_bytes(p[:4], "big") for p in stalled.got(a)]
                assert seen == sorted(seen) and len(seen) < total and seen[-1] == total - 1
            finally:
                hold.set()
                await stalled.mesh.stop()

    run(scenario())


def test_removing_a_validator_disconnects_it_and_refuses_it_afterwards():
    async def scenario():
        async with cluster(KEYS[:3]) as (a, b, c):
            with structlog.testing.capture_logs() as logs:
                a.mesh.set_peers({b.id: b.url})
                await eventually(lambda: a.mesh.connected() == {b.id}, "the removed validator is gone")
                await eventually(lambda: a.id not in c.mesh.connected(), "the removed validator noticed")
            assert events(logs, "peer removed")[0]["peer"] == c.id.hex()[:16]
            assert a.mesh.send(c.id, b"x") is False
            # It keeps its other links, but a cannot hear it any more.
            c.mesh.broadcast(b"from the former validator")
            await eventually(lambda: b.got(c) == [b"from the former validator"], "b still hears c")
            assert a.got(c) == []
            raw = RawPeer(c.key, a.url)
            try:
                ws = await raw.connect()
                await ws.send_bytes(DialerHandshake(c.key, CHAIN, a.id, local_tls_key=None, peer_tls_key=None).hello())
                code, reason = await closed_with(ws)
            finally:
                await raw.close()
            assert code == 4001 and reason.startswith("unknown_key")

    run(scenario())


def test_simultaneous_dials_converge_on_the_connection_dialed_by_the_lower_key():
    async def scenario():
        limits = MeshLimits(**{**FAST.__dict__, "dial_fallback_ms": 0})
        with structlog.testing.capture_logs() as logs:
            async with cluster(KEYS[:2], limits=limits) as (low, high):
                await eventually(lambda: low.peer(high)["direction"] == "out" and high.peer(low)["direction"] == "in",
                                 "both sides kept the connection the lower key dialed")
                sessions = (low.peer(high)["sessions"], high.peer(low)["sessions"])
                await asyncio.sleep(0.3)  # no flapping afterwards
                assert (low.peer(high)["sessions"], high.peer(low)["sessions"]) == sessions
                assert low.peer(high)["direction"] == "out"
                high.mesh.send(low.id, b"up")
                low.mesh.send(high.id, b"down")
                await eventually(lambda: low.got(high) == [b"up"] and high.got(low) == [b"down"], "messages flow")
        reasons = [e["reason"] for e in events(logs, "peer disconnected")]
        assert any("duplicate connection" in r or "replaced by a newer" in r for r in reasons)

    run(scenario())


def test_the_higher_key_dials_when_the_lower_key_has_no_url_for_it():
    async def scenario():
        limits = MeshLimits(**{**FAST.__dict__, "dial_fallback_ms": 50})
        low, high = Node(KEYS[0], IDS[:2], limits=limits), Node(KEYS[1], IDS[:2], limits=limits)
        try:
            await low.mesh.start()
            await high.mesh.start()
            high.mesh.set_peers({low.id: low.url})  # low keeps {high: None}
            await eventually(lambda: high.mesh.connected() == {low.id} and low.mesh.connected() == {high.id},
                             "the fallback dial connected")
            assert high.peer(low)["direction"] == "out" and low.peer(high)["direction"] == "in"
        finally:
            await low.mesh.stop()
            await high.mesh.stop()

    run(scenario())


def test_mesh_mounted_on_a_shared_https_port_serves_peers_and_refuses_certificateless_peer_requests():
    async def scenario():
        # The mounted node has the higher key, so the other (lower) dials it.
        mounted_key, dialer = KEYS[1], Node(KEYS[0], IDS[:2], tls=True)
        mounted_id = mounted_key.public_key.raw
        inbox = []

        async def on_message(sender, payload):
            inbox.append((sender, payload))

        async def status(request):
            return web.json_response({"connected": len(mesh.connected())})

        shared = server_context(CERTS[mounted_id], make_node_certificate(mounted_key, "x")[1],
                                [CERTS[i] for i in IDS[:2]], require_client_certificate=False)
        mesh = PeerMesh(mounted_key, CHAIN, {dialer.id: None}, tls=tls_for(mounted_key, IDS[:2]),
                        on_message=on_message, limits=FAST)
        app = web.Application()
        app.router.add_get("/v1/status", status)
        mesh.mount(app)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=shared).start()
        port = runner.addresses[0][1]
        await mesh.start()
        await dialer.mesh.start()
        try:
            dialer.mesh.set_peers({mounted_id: f"wss://127.0.0.1:{port}{PEER_PATH}"})
            await eventually(lambda: mesh.connected() == {dialer.id}, "the peer connected through the shared port")
            dialer.mesh.send(mounted_id, b"via the api port")
            await eventually(lambda: inbox == [(dialer.id, b"via the api port")], "the message arrived")
            anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # a client without a certificate
            anonymous.check_hostname = False
            anonymous.load_verify_locations(cadata=CERTS[mounted_id].decode())
            async with aiohttp.ClientSession() as http:
                # ...is welcome on the public API...
                async with http.get(f"https://127.0.0.1:{port}/v1/status", ssl=anonymous) as response:
                    assert response.status == 200 and (await response.json()) == {"connected": 1}
                # ...but not on the peer route.
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await http.ws_connect(f"wss://127.0.0.1:{port}{PEER_PATH}", ssl=anonymous)
                assert refused.value.status == 403
            assert mesh.status()["refused"] == {"no_certificate": 1}
        finally:
            await dialer.mesh.stop()
            await mesh.stop()
            await runner.cleanup()

    run(scenario())


def test_a_port_already_in_use_is_a_clear_error():
    async def scenario():
        async def noop(sender, payload):
            pass

        first = PeerMesh(KEYS[0], CHAIN, {}, tls=None, on_message=noop, listen=("127.0.0.1", 0))
        await first.start()
        try:
            second = PeerMesh(KEYS[1], CHAIN, {}, tls=None, on_message=noop, listen=("127.0.0.1", first.listen_port))
            with pytest.raises(TransportError, match="cannot listen for peers on 127.0.0.1"):
                await second.start()
        finally:
            await first.stop()

    run(scenario())


def test_a_peer_that_stops_answering_pings_is_disconnected_by_the_heartbeat():
    async def scenario():
        limits = MeshLimits(**{**FAST.__dict__, "heartbeat_ms": 200})
        async with cluster(KEYS[:2], allowed=IDS[:4], limits=limits) as (a, b):
            reader, writer = await raw_socket_peer(KEYS[3], a.mesh.listen_port)
            try:
                await eventually(lambda: IDS[3] in a.mesh.connected(), "the silent peer is connected")
                # It reads nothing and answers no ping from here on.
                await eventually(lambda: IDS[3] not in a.mesh.connected(), "the heartbeat dropped the silent peer")
                assert a.mesh.connected() == {b.id}
            finally:
                writer.close()

    run(scenario())
