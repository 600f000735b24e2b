"""BFT wire messages: one canonical encoding each, strict decoding, domain-separated
signatures."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.bft.messages import (
    BatchReply,
    CatchUp,
    CheckpointVote,
    CommitVote,
    Decided,
    Fetch,
    MessageError,
    NewView,
    Prepare,
    PreparedCertificate,
    PrePrepare,
    Request,
    Status,
    ViewChange,
    decode,
    encode,
    vote_payload,
)
from consensus.sim.keys import Keyring
from ledger import codec
from ledger.certificate import CheckpointCertificate, CommitCertificate, commit_vote_payload
from ledger.crypto import Kind, PrivateKey, verify_signature

nat = st.integers(min_value=0, max_value=2**63)
pos = st.integers(min_value=1, max_value=2**63)
digest = st.binary(min_size=32, max_size=32)
sig = st.binary(min_size=1, max_size=128)
batch = st.binary(max_size=200)

checkpoints = st.builds(
    CheckpointCertificate, nat, digest, digest, st.binary(min_size=1, max_size=4), st.binary(min_size=96, max_size=96)
)
prepared = st.builds(
    PreparedCertificate,
    pos,
    nat,
    digest,
    sig,
    st.lists(st.tuples(digest, sig), max_size=4, unique_by=lambda p: p[0]).map(lambda ps: tuple(sorted(ps))),
)
view_changes = st.builds(
    ViewChange,
    pos,
    digest,
    st.none() | checkpoints,
    st.lists(prepared, max_size=3, unique_by=lambda c: c.seq).map(lambda cs: tuple(sorted(cs, key=lambda c: c.seq))),
    sig,
)
commit_certs = st.builds(
    lambda h, v, d, sigs: CommitCertificate("bft", h, v, d, tuple(sorted(sigs))),
    pos, nat, digest, st.lists(st.tuples(st.integers(0, 30), sig), max_size=4, unique_by=lambda p: p[0]),
)
decided = commit_certs.flatmap(lambda c: st.builds(Decided, st.just(c.height), batch, st.just(c)))
messages = st.one_of(
    st.builds(PrePrepare, nat, pos, digest, batch, sig),
    st.builds(Prepare, nat, pos, digest, sig),
    st.builds(CommitVote, nat, pos, digest, sig),
    st.builds(CheckpointVote, pos, digest, digest, st.binary(min_size=96, max_size=96)),
    view_changes,
    st.builds(
        NewView,
        nat,
        st.lists(view_changes, max_size=3).map(tuple),
        st.lists(st.tuples(pos, digest, sig), max_size=3, unique_by=lambda t: t[0]).map(lambda ts: tuple(sorted(ts))),
        sig,
    ),
    st.builds(Request, batch),
    st.builds(Status, nat, st.booleans(), nat, nat, digest),
    decided,
    st.builds(CatchUp, st.none() | checkpoints, st.lists(decided, max_size=2, unique_by=lambda d: d.seq).map(
        lambda ds: tuple(sorted(ds, key=lambda d: d.seq)))),
    st.builds(Fetch, digest),
    st.builds(BatchReply, batch),
)


@settings(max_examples=300, deadline=None)
@given(messages)
def test_bft_message_round_trips_through_its_one_encoding(message):
    data = encode(message)
    assert decode(data) == message
    assert encode(decode(data)) == data


@settings(max_examples=300, deadline=None)
@given(messages, st.data())
def test_bft_decode_refuses_any_truncation_or_trailing_bytes(message, data):
    raw = encode(message)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(MessageError):
        decode(raw[:cut])
    with pytest.raises(MessageError):
        decode(raw + b"\x00")


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_bft_decode_of_garbage_raises_only_message_error(data):
    try:
        decode(data)
    except MessageError:
        pass


@pytest.mark.parametrize(
    "fields, problem",
    [
        ([99, 1], "unknown BFT message tag"),
        ([2, 0, 0, b"d" * 32, b"s"], "seq must be a positive integer"),
        ([2, -1, 1, b"d" * 32, b"s"], "view must be a non-negative integer"),
        ([2, 0, 1, b"d" * 31, b"s"], "a digest is 32 bytes"),
        ([2, 0, 1, b"d" * 32, b""], "a signature is 1 to"),
        ([2, 0, 1, b"d" * 32, b"s" * 129], "a signature is 1 to"),
        ([3, 0, 1, b"d" * 32], "a commit is [tag, view, seq, digest, signature]"),
        ([1, 0, 1, b"d" * 32, "text", b"s"], "batch must be bytes"),
        ([8, 0, 1, 0, 0, b"h" * 32], "status active flag is a boolean"),
        ([4, 16, b"d" * 32, b"r" * 32, b"s" * 95], "a checkpoint signature is 96 bytes"),
        ([5, 1, b"k" * 32, None, [[2, 0, b"d" * 32, b"s", []], [1, 0, b"d" * 32, b"s", []]], b"s"], "ascending"),
        ([5, 1, b"k" * 32, None, [[1, 0, b"d" * 32, b"s", [[b"b" * 32, b"s"], [b"a" * 32, b"s"]]]], b"s"], "ascending"),
        ([6, 1, [[2, 0, 1, b"d" * 32, b"s"]], [], b"s"], "a new-view carries view-change messages"),
        (["x"], "integer type tag"),
    ],
)
def test_bft_decode_names_what_is_wrong(fields, problem):
    with pytest.raises(MessageError) as err:
        decode(codec.encode(fields))
    assert problem in str(err.value)


def test_bft_decode_refuses_oversized_messages():
    with pytest.raises(MessageError, match="limit"):
        decode(codec.encode([7, b"x" * (8 << 20)]))


def test_bft_vote_signatures_are_separated_by_kind_and_chain():
    key = PrivateKey(bytes(range(32)))
    pk = key.public_key.raw
    payload = vote_payload(7, 2, b"d" * 32)
    assert payload == commit_vote_payload(7, 2, b"d" * 32)
    prepare = key.sign("shard/north", Kind.PREPARE, payload)
    assert verify_signature(pk, "shard/north", Kind.PREPARE, payload, prepare)
    assert not verify_signature(pk, "shard/north", Kind.COMMIT, payload, prepare), "a prepare replayed as a commit"
    assert not verify_signature(pk, "shard/north", Kind.PRE_PREPARE, payload, prepare)
    assert not verify_signature(pk, "shard/south", Kind.PREPARE, payload, prepare), "a vote replayed on another shard"
    # The cheap simulation signer binds kind and chain the same way.
    ring = Keyring("shard/north", random.Random(1))
    ident = ring.new_identity("v0")
    cheap = ident.signer.sign(Kind.PREPARE, payload)
    assert ring.verify(ident.node_id, Kind.PREPARE, payload, cheap)
    assert not ring.verify(ident.node_id, Kind.COMMIT, payload, cheap)
