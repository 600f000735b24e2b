"""The compiled twins of the state tree's hot loops compute exactly what the Python ones do.

``ledger/_state_native.c`` (built by ``make`` where a C compiler and OpenSSL's headers
exist) replaces the tree's hashing loops, its two chunk edits and the record decoder.
Each is compared here with its pure-Python reference on random chunks: same return
value, same chunk afterwards, byte for byte. Bad arguments get a clear ``ValueError`` or
``TypeError``, never a crash. The tree's own tests (``test_state``,
``test_state_perf_equivalence``) run on whichever backend is loaded, and once more here
in a subprocess on the pure-Python one, so both stay held to the record format.

Without the compiled module the comparisons are skipped; with
GRIDLEDGER_REQUIRE_NATIVE_TREE=1 (``make test``) on a machine that has a C compiler and
the headers they fail instead, so CI proves the backend it ships with, while a machine
without them still runs the whole suite on the pure-Python tree.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import state_chunk, state_native
from ledger.state import EMPTY
from ledger.state_chunk import (
    FULL,
    SLOT0,
    Chunk,
    encode_chunk,
    new_chunk,
    py_decode_chunk,
    py_set_hash,
    py_set_leaf,
)
from ledger.state_native import py_leaf_hash, py_path_leaf, py_rehash_full, py_walk_up

REPO = Path(__file__).resolve().parent.parent
native = state_native.native
MISSING = "the compiled state tree (ledger._state_native) is not built (make, with a C compiler)"



def toolchain_present() -> bool:
    """Whether this machine could build the compiled part: a C compiler, Python's and OpenSSL's headers."""
    # The compiler the build uses: $CC, else the one Python was built with.
    cc = shutil.which((os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0])
    include = sysconfig.get_paths()["include"]
    if cc is None or not os.path.exists(os.path.join(include, "Python.h")):
        return False
    probe = subprocess.run([cc, "-E", "-x", "c", "-", "-o", os.devnull], input="#include <openssl/evp.h>\n",
                           capture_output=True, text=True)
    return probe.returncode == 0


if native is None:
    # make test requires it where it can be built: a machine with the toolchain that
    # still runs the pure tree has a broken build; one without runs the pure tree only.
    if (os.environ.get("GRIDLEDGER_REQUIRE_NATIVE_TREE") == "1" and not os.environ.get("GRIDLEDGER_PURE_TREE")
            and toolchain_present()):
        raise RuntimeError(f"GRIDLEDGER_REQUIRE_NATIVE_TREE=1 and a C toolchain is here, but {MISSING}")
    pytestmark = pytest.mark.skip(reason=MISSING)

SETTINGS = settings(max_examples=200, deadline=None, database=None)


def fields(c: Chunk) -> tuple:
    return (c.eb, c.lb, c.xb, c.ne, c.nl, bytes(c.b))


def twin(c: Chunk) -> Chunk:
    return Chunk(c.eb, c.lb, c.xb, c.ne, c.nl, bytearray(c.b))


def random_chunk(rng: random.Random, edits: int) -> tuple[Chunk, Chunk]:
    """The same random chunk built twice, once by each backend's edits (compared after every edit).

    Positions are added with their ancestors (a tree's chunks never hold a position
    without its parent); leaves are set, replaced (other lengths, stored outside or not)
    anywhere among them.
    """
    a, b = new_chunk(), new_chunk()
    for _ in range(edits):
        pos = rng.randrange(1, 2 * SLOT0)
        if rng.random() < 0.6:
            h = rng.randbytes(32)
            for p in [pos >> s for s in range(pos.bit_length() - 1, -1, -1)]:
                if not (a.eb >> p) & 1 or p == pos:
                    py_set_hash(a, p, h)
                    native.set_hash(b, p, h)
        else:
            key = rng.randbytes(rng.choice((0, 1, 20, 45)))
            value = rng.randbytes(rng.choice((0, 1, 8, 64, 300)))
            x = rng.randrange(2)
            py_set_leaf(a, pos, key, value, x)
            native.set_leaf(b, pos, key, value, x)
        assert fields(a) == fields(b)
    return a, b


@SETTINGS
@given(st.integers(0, 2**32), st.integers(1, 60))
def test_the_chunk_edits_leave_the_same_bytes_as_the_python_edits(seed, edits):
    random_chunk(random.Random(seed), edits)


@SETTINGS
@given(st.integers(0, 2**32), st.integers(1, 60))
def test_a_walk_up_a_chunk_gives_the_same_root_and_slots(seed, edits):
    rng = random.Random(seed)
    a, _ = random_chunk(rng, edits)
    existing = [p for p in range(1, 2 * SLOT0) if (a.eb >> p) & 1] or [1]
    pos = rng.choice(existing)
    cur = rng.randbytes(32)
    py_set_hash(a, pos, cur)
    b = twin(a)
    assert native.walk_up(b.b, b.eb, pos, cur) == py_walk_up(a.b, a.eb, pos, cur)
    assert fields(a) == fields(b)


@SETTINGS
@given(st.integers(0, 2**32), st.lists(st.integers(SLOT0, 2 * SLOT0 - 1), max_size=300))
def test_a_full_chunk_is_rehashed_level_by_level_the_same(seed, dirty):
    rng = random.Random(seed)
    a = Chunk(FULL, 0, 0, 2 * SLOT0 - 1, 0, bytearray(rng.randbytes((2 * SLOT0 - 1) * 32)))
    b = twin(a)
    py_rehash_full(a.b, dirty, 8)
    native.rehash_full(b.b, dirty, 8)
    assert fields(a) == fields(b)


@SETTINGS
@given(st.binary(max_size=80), st.binary(max_size=3000), st.binary(max_size=40))
def test_leaf_hashes_and_paths_are_the_same(path, value, tag):
    assert native.leaf_hash(path, value) == py_leaf_hash(path, value)
    assert native.path_leaf(tag, path, value) == py_path_leaf(tag, path, value)
    assert native.path_leaf(tag, path, value)[0] == hashlib.sha256(tag + path).digest()


@SETTINGS
@given(st.integers(0, 2**32), st.integers(0, 60))
def test_a_record_decodes_to_the_same_chunk(seed, edits):
    a, _ = random_chunk(random.Random(seed), edits)
    raw = encode_chunk(a)
    decoded = native.decode_chunk(raw)
    assert fields(decoded) == fields(py_decode_chunk(raw)) == fields(a)
    assert fields(native.decode_chunk(memoryview(raw))) == fields(a)


def test_a_compact_record_is_left_to_the_python_decoder():
    rng = random.Random(5)
    full = Chunk(FULL, 0, 0, 2 * SLOT0 - 1, 0, bytearray((2 * SLOT0 - 1) * 32))
    full.b[(SLOT0 - 1) * 32 :] = rng.randbytes(SLOT0 * 32)
    py_rehash_full(full.b, range(SLOT0, 2 * SLOT0), 8)
    raw = encode_chunk(full, compact=True)
    assert native.decode_chunk(raw) is None
    assert fields(state_chunk.decode_chunk(raw)) == fields(full)


@SETTINGS
@given(st.binary(max_size=200))
def test_garbage_records_are_refused_with_a_value_error_not_a_crash(raw):
    try:
        chunk = native.decode_chunk(raw)
    except ValueError as e:
        assert "malformed chunk record" in str(e)
    else:
        assert chunk is None or isinstance(chunk, Chunk)


def test_bad_arguments_get_clear_errors():
    c = new_chunk()
    native.set_hash(c, 1, bytes(32))
    with pytest.raises(ValueError, match="32 bytes"):
        native.set_hash(c, 2, bytes(31))
    with pytest.raises(ValueError, match="1..511"):
        native.set_hash(c, 512, bytes(32))
    with pytest.raises(ValueError, match="1..511"):
        native.set_leaf(c, 0, b"k", b"v", 0)
    with pytest.raises(TypeError, match="bytes"):
        native.set_leaf(c, 2, "k", b"v", 0)
    with pytest.raises(ValueError, match="existing position"):
        native.walk_up(c.b, c.eb, 2, bytes(32))
    with pytest.raises(ValueError, match="shorter than its bitmap"):
        native.walk_up(bytearray(10), c.eb, 1, bytes(32))
    with pytest.raises(ValueError, match="below 2\\*\\*512"):
        native.walk_up(c.b, -1, 1, bytes(32))
    with pytest.raises(ValueError, match="below 2\\*\\*512"):
        native.walk_up(c.b, 1 << 600, 1, bytes(32))
    with pytest.raises(ValueError, match="511 hashes"):
        native.rehash_full(bytearray(100), [SLOT0], 8)
    with pytest.raises(TypeError):
        native.walk_up(c.b, c.eb, 1)
    broken = Chunk(c.eb | 4, 0, 0, 2, 0, bytearray(c.b))  # says two positions, holds one hash
    with pytest.raises(ValueError, match="shorter than its bitmaps"):
        native.set_hash(broken, 4, bytes(32))
    assert fields(c) == (2, 0, 0, 1, 0, bytes(32))


def test_counts_that_disagree_with_the_bitmaps_are_refused_before_any_offset_is_used():
    c = new_chunk()
    for pos in (1, 2, 3):
        native.set_hash(c, pos, bytes(32))
    native.set_leaf(c, 2, b"", b"", 0)
    before = fields(c)
    for ne, nl in ((3, 0), (-1, 1), (3, -10), (600, 1)):
        broken = Chunk(c.eb, c.lb, c.xb, ne, nl, bytearray(c.b))
        with pytest.raises(ValueError, match="counts disagree"):
            native.set_leaf(broken, 3, b"k", b"v", 0)
        with pytest.raises(ValueError, match="counts disagree"):
            native.set_leaf(broken, 2, b"k", b"v", 0)
    assert fields(c) == before


def test_a_shorter_value_with_a_view_on_the_body_is_refused_and_loses_nothing():
    for set_leaf in (py_set_leaf, native.set_leaf):
        c = new_chunk()
        for pos in (1, 2, 3):
            py_set_hash(c, pos, bytes([pos]) * 32)
        py_set_leaf(c, 2, b"key2", b"long value", 0)
        py_set_leaf(c, 3, b"key3", b"other", 0)
        before = fields(c)
        view = memoryview(c.b)
        with pytest.raises(BufferError):
            set_leaf(c, 2, b"key2", b"v", 0)
        view.release()
        assert fields(c) == before


def test_a_full_chunk_is_rehashed_from_int_positions_on_one_row_only():
    body = bytearray((2 * SLOT0 - 1) * 32)

    class Position:
        def __index__(self) -> int:
            return SLOT0

    with pytest.raises(TypeError, match="is an int"):
        native.rehash_full(body, [Position()], 8)
    with pytest.raises(ValueError, match="one row"):
        native.rehash_full(body, [16, 8], 1)
    assert body == bytearray((2 * SLOT0 - 1) * 32)


def test_the_tree_tests_pass_on_the_pure_python_tree_too():
    env = dict(os.environ, GRIDLEDGER_PURE_TREE="1")
    env.pop("GRIDLEDGER_REQUIRE_NATIVE_TREE", None)
    probe = subprocess.run(
        [sys.executable, "-c", "from ledger.state_native import BACKEND; print(BACKEND)"],
        cwd=REPO, env=env, capture_output=True, text=True, check=True,
    )
    assert probe.stdout.strip() == "python"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "tests/test_state.py", "tests/test_state_perf_equivalence.py"],
        cwd=REPO, env=env, capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]


def test_the_empty_hash_is_what_the_compiled_loops_assume():
    # The C file hard-codes the node and leaf prefixes and the empty hash (32 zero bytes);
    # a change of the format must change both.
    from ledger.state import LEAF_PREFIX, NODE_PREFIX

    assert (NODE_PREFIX, LEAF_PREFIX, EMPTY) == (b"\x01", b"\x00", bytes(32))
