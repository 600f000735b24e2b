"""The gas schedule and the runtime's limits, with the reason for each number.

Gas is a count of work, defined on the contract's *source* (its AST) and on the sizes
of the values it handles, never on CPython's bytecode, so it is the same on every
interpreter version. One unit is roughly one elementary Python operation (10-40 ns
on a validator); a token transfer costs a few thousand units.

Two rules hold everywhere:

* gas is charged **before** the work it pays for (a block's static cost on entry to
  the block, a builtin's cost from its input sizes before it runs);
* memory is bounded by gas: every unit of gas can allocate at most a few dozen bytes
  that the runtime does not count itself, and everything larger (strings, bytes,
  big integers, copies of collections) is counted in bytes against
  ``MAX_TX_ALLOC_BYTES`` and charged at ``BYTES_PER_GAS``.
"""

from __future__ import annotations

# ----------------------------------------------------------------- static costs
# Charged per AST node by the instrumenter (contracts/runtime/instrument.py).
# Calibration: instrumented straight-line code runs at about 50 ns per unit on a
# validator; every dynamic cost below is set so that no operation runs much slower
# per unit than that (measured with adversarial loops of each operation), which is
# what keeps "gas limit" a bound on time.
STMT = 1  # every statement
OP = 1  # a unary/binary/boolean operator, one comparison, an if-expression
ATTRIBUTE = 1
SUBSCRIPT = 2
STORE = 1  # each assignment target
CALL = 3  # any call expression (the callee's own costs come on top)
DISPLAY = 3  # creating a list or tuple display; plus ELEMENT per element
DICT_DISPLAY = 5  # plus 2 * ELEMENT per pair
ELEMENT = 1
FSTRING = 2  # plus ELEMENT per formatted field, plus the text's size dynamically
COMPREHENSION = 5  # plus ITERATION per iteration, charged as it happens
ITERATION = 3  # one loop or comprehension iteration (covers the loop variable's store)
FUNCTION_ENTRY = 10  # entering any contract function (frame, arguments, depth check)

# ----------------------------------------------------------------- dynamic costs
# Charged by the runtime's helpers and builtins, from input sizes, before the work.
BYTES_PER_GAS = 16  # creating strings, bytes and copies: 1 gas per 16 bytes
ELEMENTS_PER_GAS = 4  # C-speed passes over collections (sum, join, sort keys...): 1 gas per 4 elements
WALK_ELEMENT = 1  # Python-speed passes (nesting checks): per element visited
CONTAINER_VISIT = 6  # a walk entering one list, tuple or dict
COMPARE_ELEMENT = 1  # comparing or hashing one element of a collection (after the walk)
RENDER_ELEMENT = 10  # str()/f-string rendering, per element of a container
RENDER_CHAR = 4  # per character of text that needs escaping when rendered
TUPLE_ELEMENT_BYTES = 72  # a conversion that makes a new tuple per element (zip, items)
FIXED_OP = 30  # one Fixed operation runs a few Python calls
BUILTIN_CALL = 6  # entering a builtin or method that does more than one C call (min, sorted, str...)
COMPARE = 2  # per comparison a sort performs (n * ceil(log2 n) of them)
INT_LIMB_BITS = 64  # big integers are charged per 64-bit limb of their operands
INT_MUL_PER_LIMB2 = 1  # multiplication/division: per (limbs of a) * (limbs of b)

STORAGE_READ = 200  # a key looked up through the overlays (may reach the disk)
STORAGE_READ_BYTE = 1  # per byte of key and value read
STORAGE_WRITE = 1000  # a key written: it stays in every validator's state
STORAGE_WRITE_BYTE = 10
STORAGE_DELETE = 500
EVENT = 300
EVENT_BYTE = 4
CONTRACT_CALL = 700  # calling another contract: lookup, context, argument checks
COPY_BYTE = 1  # per byte of arguments and results copied between contracts
HASH_BASE = 50  # sha256: plus 1 per 16 bytes

TX_BASE = 2000  # every executed transaction: nonce, account, receipt
TX_ARG_BYTE = 2  # per byte of a transaction's encoded arguments
DEPLOY_BASE = 20_000
DEPLOY_SOURCE_BYTE = 40  # parsing, checking, instrumenting and compiling, per source byte

# ----------------------------------------------------------------- limits
# A transaction's gas limit may not exceed this: at ~25 ns per unit it bounds one
# transaction to well under a second of a validator's time, and with memory tied to
# gas it bounds the memory one transaction can hold.
MAX_TX_GAS = 10_000_000
# Module-level constants are evaluated at deployment and at every load; this budget
# is far above any real contract's constants and keeps a load cheap.
MODULE_INIT_GAS = 200_000

MAX_CALL_DEPTH = 64  # nested contract function calls, recursion included
MAX_CONTRACT_DEPTH = 8  # nested calls between contracts
MAX_INT_BITS = 1024  # every integer a contract handles; 309 decimal digits, below
# CPython's smallest configurable int/str conversion limit (640 digits), so
# str(int) and int(str) behave identically on every validator whatever its settings.
MAX_INT_TEXT = 400  # characters int() accepts (leading zeros and underscores included)
MAX_STR_LEN = 1 << 20  # characters of one string
MAX_BYTES_LEN = 1 << 20  # bytes of one bytes value
MAX_COLLECTION_LEN = 100_000  # elements of one list, tuple or dict
MAX_NESTING = 32  # containers within containers (the codec's depth limit too)
MAX_TX_ALLOC_BYTES = 128 << 20  # bytes the runtime counts as allocated by one transaction
MAX_KEY_PART_BYTES = 256  # one part of a storage key
MAX_VALUE_BYTES = 64 << 10  # one stored value, encoded
MAX_TX_WRITE_BYTES = 2 << 20  # all values written by one transaction, encoded
MAX_TX_EVENTS = 1024
MAX_TX_EVENT_BYTES = 256 << 10
MAX_RESULT_BYTES = 16 << 10  # a function's return value in a receipt, encoded
MAX_KEY_PARTS = 8
MAX_SCALE = 36  # digits after the point of a Fixed value

# ----------------------------------------------------------------- checker limits
MAX_SOURCE_BYTES = 96 << 10  # fits a deployment in one transaction (128 KiB)
MAX_AST_NODES = 60_000
MAX_AST_DEPTH = 80  # nesting of syntax; real contracts stay below 30
