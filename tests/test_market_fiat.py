"""The fiat contract (MARKET.md section 5): minting, redemption, transfers, allowances,
issuer fees, and the payment entry points of the system contracts."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from market_harness import REF, Chain, error_code, event_fields, ref

GO = "grid_operator"

# A stand-in for the settlement contract (named like it, so fiat accepts its calls):
# it exercises pay_from and pay from its own account, and tries to debit a bystander.
SETTLEMENT_DOUBLE = """
@export
def collect(code: str, owner: Address, payee: Address, amount: int) -> int:
    return call("fiat", "pay_from", code, owner, payee, amount, "settlement:test")


@export
def deposit(code: str, amount: int) -> int:
    return call("fiat", "pay", code, ctx.signer, ctx.this, amount, "collateral_deposit")


@export
def pay_out(code: str, payee: Address, amount: int) -> int:
    return call("fiat", "pay", code, ctx.this, payee, amount, "escrow:test")


@export
def debit(code: str, victim: Address, payee: Address, amount: int) -> int:
    return call("fiat", "pay", code, victim, payee, amount, "theft")


@view
def escrow_of(code: str, address: Address) -> int:
    return 0
"""
# Any other contract trying the system entry points.
INTRUDER = """
@export
def grab(code: str, owner: Address, amount: int) -> int:
    return call("fiat", "pay_from", code, owner, ctx.this, amount, "grab")


@export
def pay_self(code: str, payee: Address, amount: int) -> int:
    return call("fiat", "pay", code, ctx.signer, payee, amount, "grab")
"""


def funded(**kw) -> Chain:
    chain = Chain(**kw)
    chain.admit("alice", ["consumer"])
    chain.admit("bob", ["producer"])
    chain.mint("alice", 10_000)
    return chain


def supply(chain: Chain, code: str = "CHF") -> int:
    return chain.view("fiat", "supply_of", code)


# ------------------------------------------------------------------ mint


def test_only_the_issuer_mints():
    chain = funded()
    assert chain.fails(GO, "fiat", "mint", "CHF", chain.addr("alice"), 5, ref(1)) == "not_issuer"
    assert (
        chain.fails("alice", "fiat", "mint", "CHF", chain.addr("alice"), 5, ref(2)) == "not_issuer"
    )
    receipt = chain.tx("bank", "fiat", "mint", "CHF", chain.addr("bob"), 700, ref(3))
    assert receipt.ok
    assert [(e.name, event_fields(e)) for e in receipt.events] == [
        ("Minted", {"currency": "CHF", "to": chain.addr("bob"), "amount": 700})
    ]
    assert chain.balance("bob") == 700 and supply(chain) == 10_700


def test_mint_checks_in_the_documented_order():
    chain = funded()
    assert (
        chain.fails("bank", "fiat", "mint", "USD", chain.addr("ghost"), 0, b"")
        == "unknown_currency"
    )
    assert chain.fails("ghost", "fiat", "mint", "CHF", chain.addr("ghost"), 0, b"") == "not_member"
    assert chain.fails("alice", "fiat", "mint", "CHF", chain.addr("ghost"), 0, b"") == "not_issuer"
    assert chain.fails("bank", "fiat", "mint", "CHF", chain.addr("ghost"), 0, b"") == "bad_amount"
    assert chain.fails("bank", "fiat", "mint", "CHF", chain.addr("ghost"), 5, b"") == "not_member"
    assert (
        chain.fails("bank", "fiat", "mint", "CHF", chain.addr("bob"), 5, b"x" * 31)
        == "bad_reference"
    )
    chain.ok("bank", "fiat", "mint", "CHF", chain.addr("bob"), 5, REF)
    assert (
        chain.fails("bank", "fiat", "mint", "CHF", chain.addr("bob"), 5, REF)
        == "duplicate_reference"
    )
    # the same deposit reference may back a mint of another currency
    chain.ok("bank", "fiat", "mint", "EUR", chain.addr("bob"), 5, REF)


def test_a_suspended_member_receives_a_mint_but_a_banned_one_does_not():
    chain = funded()
    chain.ok(GO, "membership", "suspend", chain.addr("bob"))
    chain.ok("bank", "fiat", "mint", "CHF", chain.addr("bob"), 5, ref("s"))
    chain.ok(GO, "membership", "ban", chain.addr("bob"))
    assert (
        chain.fails("bank", "fiat", "mint", "CHF", chain.addr("bob"), 5, ref("b")) == "not_active"
    )
    assert chain.balance("bob") == 5


def test_a_suspended_issuer_cannot_mint():
    chain = funded()
    chain.ok(GO, "membership", "suspend", chain.addr("bank"))
    assert (
        chain.fails("bank", "fiat", "mint", "CHF", chain.addr("bob"), 5, ref("x")) == "not_active"
    )


# ------------------------------------------------------------------ redeem


def test_redeem_burns_from_the_holder_without_fee():
    chain = funded()
    receipt = chain.tx("alice", "fiat", "redeem", "CHF", 4000, ref("r1"))
    assert receipt.ok and [e.name for e in receipt.events] == ["Redeemed"]
    assert chain.balance("alice") == 6000 and supply(chain) == 6000 and chain.balance("bank") == 0


def test_redeem_checks_references_and_funds():
    chain = funded()
    assert chain.fails("alice", "fiat", "redeem", "XXX", 1, REF) == "unknown_currency"
    assert chain.fails("ghost", "fiat", "redeem", "CHF", 1, REF) == "not_member"
    assert chain.fails("alice", "fiat", "redeem", "CHF", 0, REF) == "bad_amount"
    assert chain.fails("alice", "fiat", "redeem", "CHF", 1, b"short") == "bad_reference"
    assert chain.fails("alice", "fiat", "redeem", "CHF", 10_001, REF) == "insufficient_funds"
    chain.ok("alice", "fiat", "redeem", "CHF", 1, REF)
    assert chain.fails("alice", "fiat", "redeem", "CHF", 1, REF) == "duplicate_reference"


def test_exclusion_is_not_confiscation_a_banned_member_redeems():
    chain = funded()
    chain.ok(GO, "membership", "ban", chain.addr("alice"))
    chain.ok("alice", "fiat", "redeem", "CHF", 10_000, ref("all"))
    assert chain.balance("alice") == 0 and supply(chain) == 0


# ------------------------------------------------------------------ transfer and fees


@pytest.mark.parametrize(
    ("amount", "fee"), [(1, 1), (9_999, 10), (10_000, 10), (10_001, 11), (1_000_000 // 1000, 1)]
)
def test_percentage_fee_rounds_up_for_the_issuer(amount, fee):
    chain = funded()
    chain.mint("alice", 2_000_000)
    before = chain.balance("alice")
    receipt = chain.tx("alice", "fiat", "transfer", "CHF", chain.addr("bob"), amount)
    assert receipt.ok and receipt.result == fee
    assert chain.balance("bob") == amount
    assert chain.balance("alice") == before - amount - fee
    assert chain.balance("bank") == fee
    names = [(e.name, event_fields(e)) for e in receipt.events]
    assert names[0] == (
        "Transferred",
        {
            "currency": "CHF",
            "frm": chain.addr("alice"),
            "to": chain.addr("bob"),
            "amount": amount,
            "reason": "transfer",
        },
    )
    assert names[1] == (
        "FeePaid",
        {
            "currency": "CHF",
            "payer": chain.addr("alice"),
            "issuer": chain.addr("bank"),
            "amount": fee,
        },
    )


def test_fixed_fee_is_charged_per_transfer():
    chain = Chain(currencies=[("CHF", "bank", "fixed", 7)])
    chain.admit("alice", ["consumer"])
    chain.admit("bob", ["producer"])
    chain.mint("alice", 100)
    assert chain.ok("alice", "fiat", "transfer", "CHF", chain.addr("bob"), 1) == 7
    assert (chain.balance("alice"), chain.balance("bob"), chain.balance("bank")) == (92, 1, 7)


def test_no_fee_between_holders_and_the_issuer():
    chain = funded()
    assert chain.ok("alice", "fiat", "transfer", "CHF", chain.addr("bank"), 100) == 0
    assert chain.ok("bank", "fiat", "transfer", "CHF", chain.addr("bob"), 50) == 0
    assert (
        chain.balance("alice") == 9_900
        and chain.balance("bob") == 50
        and chain.balance("bank") == 50
    )


def test_a_currency_without_fee_moves_exactly_the_amount():
    chain = funded()
    chain.mint("alice", 500, code="EUR")
    assert chain.ok("alice", "fiat", "transfer", "EUR", chain.addr("bob"), 500) == 0
    assert chain.balance("bob", "EUR") == 500 and chain.balance("alice", "EUR") == 0


def test_transfer_needs_amount_plus_fee():
    chain = funded()
    assert (
        chain.fails("alice", "fiat", "transfer", "CHF", chain.addr("bob"), 10_000)
        == "insufficient_funds"
    )
    assert chain.balance("alice") == 10_000 and chain.balance("bob") == 0
    chain.ok("alice", "fiat", "transfer", "CHF", chain.addr("bob"), 9_990)
    assert chain.balance("alice") == 0


def test_transfer_checks_in_the_documented_order():
    chain = funded()
    assert (
        chain.fails("alice", "fiat", "transfer", "XXX", chain.addr("alice"), 0)
        == "unknown_currency"
    )
    assert chain.fails("ghost", "fiat", "transfer", "CHF", chain.addr("ghost"), 0) == "not_member"
    assert chain.fails("alice", "fiat", "transfer", "CHF", chain.addr("ghost"), 0) == "not_member"
    assert chain.fails("alice", "fiat", "transfer", "CHF", chain.addr("alice"), 0) == "bad_amount"
    assert (
        chain.fails("alice", "fiat", "transfer", "CHF", chain.addr("alice"), 5) == "self_transfer"
    )


def test_a_suspended_member_cannot_transfer_but_can_receive():
    chain = funded()
    chain.ok(GO, "membership", "suspend", chain.addr("alice"))
    assert chain.fails("alice", "fiat", "transfer", "CHF", chain.addr("bob"), 5) == "not_active"
    chain.ok(GO, "membership", "reinstate", chain.addr("alice"))
    chain.ok(GO, "membership", "suspend", chain.addr("bob"))
    chain.ok("alice", "fiat", "transfer", "CHF", chain.addr("bob"), 5)
    chain.ok(GO, "membership", "ban", chain.addr("bob"))
    assert chain.fails("alice", "fiat", "transfer", "CHF", chain.addr("bob"), 5) == "not_active"
    assert chain.balance("bob") == 5


# ------------------------------------------------------------------ allowances


def test_approve_sets_rather_than_adds():
    chain = funded()
    spender = chain.addr("bob")
    receipt = chain.tx("alice", "fiat", "approve", "CHF", spender, 300)
    assert event_fields(receipt.events[0]) == {
        "currency": "CHF",
        "owner": chain.addr("alice"),
        "spender": spender,
        "amount": 300,
    }
    chain.ok("alice", "fiat", "approve", "CHF", spender, 100)
    assert chain.view("fiat", "allowance_of", "CHF", chain.addr("alice"), spender) == 100
    chain.ok("alice", "fiat", "approve", "CHF", spender, 0)
    assert chain.view("fiat", "allowance_of", "CHF", chain.addr("alice"), spender) == 0
    assert chain.fails("alice", "fiat", "approve", "CHF", spender, -1) == "bad_amount"
    assert chain.fails("ghost", "fiat", "approve", "CHF", spender, 1) == "not_member"
    assert chain.fails("alice", "fiat", "approve", "XXX", spender, 1) == "unknown_currency"


def test_suspended_and_banned_members_may_still_approve():
    chain = funded()
    chain.ok(GO, "membership", "suspend", chain.addr("alice"))
    chain.ok("alice", "fiat", "approve", "CHF", chain.addr("bob"), 1)
    chain.ok(GO, "membership", "ban", chain.addr("alice"))
    chain.ok("alice", "fiat", "approve", "CHF", chain.addr("bob"), 2)


# ------------------------------------------------------------------ system entry points


def settlement_chain() -> Chain:
    return funded(
        exclude=("settlement",),
        extra_contracts=[("settlement", SETTLEMENT_DOUBLE), ("intruder", INTRUDER)],
    )


def settlement_account(chain: Chain) -> bytes:
    return chain.view("market_config", "get", "settlement_account")


def test_pay_from_spends_the_allowance_including_the_fee():
    chain = settlement_chain()
    account = settlement_account(chain)
    chain.ok("alice", "fiat", "approve", "CHF", account, 1_011)
    receipt = chain.tx(
        GO, "settlement", "collect", "CHF", chain.addr("alice"), chain.addr("bob"), 1_000
    )
    assert receipt.ok and receipt.result == 1
    assert chain.balance("bob") == 1_000 and chain.balance("alice") == 8_999
    assert chain.view("fiat", "allowance_of", "CHF", chain.addr("alice"), account) == 10
    assert event_fields(receipt.events[0])["reason"] == "settlement:test"
    # allowance short (needs 11 with the fee), then balance short
    assert (
        error_code(
            chain.tx(GO, "settlement", "collect", "CHF", chain.addr("alice"), chain.addr("bob"), 10)
        )
        == "insufficient_funds"
    )
    chain.ok("alice", "fiat", "approve", "CHF", account, 10**12)
    assert (
        error_code(
            chain.tx(
                GO, "settlement", "collect", "CHF", chain.addr("alice"), chain.addr("bob"), 9_000
            )
        )
        == "insufficient_funds"
    )
    assert chain.balance("alice") == 8_999


def test_a_contract_pays_from_its_own_account_without_fee():
    chain = settlement_chain()
    account = settlement_account(chain)
    chain.ok("alice", "fiat", "transfer", "CHF", chain.addr("bob"), 100)
    assert chain.ok("alice", "settlement", "deposit", "CHF", 600) == 0  # deposits are exempt too
    assert (
        chain.view("fiat", "balance_of", "CHF", account) == 600
        and chain.balance("alice") == 10_000 - 101 - 600
    )
    assert chain.ok(GO, "settlement", "pay_out", "CHF", chain.addr("bob"), 600) == 0
    assert chain.balance("bob") == 700 and chain.view("fiat", "balance_of", "CHF", account) == 0
    assert supply(chain) == 10_000


def test_no_contract_debits_an_account_that_did_not_sign():
    chain = settlement_chain()
    assert (
        error_code(
            chain.tx("bob", "settlement", "debit", "CHF", chain.addr("alice"), chain.addr("bob"), 5)
        )
        == "not_allowed"
    )
    assert (
        error_code(chain.tx("alice", "intruder", "pay_self", "CHF", chain.addr("bob"), 5))
        == "not_allowed"
    )
    chain.ok("alice", "fiat", "approve", "CHF", settlement_account(chain), 10**9)
    assert (
        error_code(chain.tx("bob", "intruder", "grab", "CHF", chain.addr("alice"), 5))
        == "not_allowed"
    )
    assert (
        error_code(
            chain.tx("alice", "fiat", "pay", "CHF", chain.addr("alice"), chain.addr("bob"), 5, "x")
        )
        == "not_allowed"
    )
    assert (
        error_code(
            chain.tx(
                "alice", "fiat", "pay_from", "CHF", chain.addr("alice"), chain.addr("bob"), 5, "x"
            )
        )
        == "not_allowed"
    )
    assert chain.balance("alice") == 10_000


def test_zero_payments_move_nothing_and_pay_no_fee():
    chain = settlement_chain()
    receipt = chain.tx(
        GO, "settlement", "collect", "CHF", chain.addr("alice"), chain.addr("bob"), 0
    )
    assert receipt.ok and receipt.result == 0 and receipt.events == ()


# ------------------------------------------------------------------ supply = sum of balances

NAMES = ("alice", "bob", "carol", "bank", GO)
OPS = st.one_of(
    st.tuples(
        st.just("mint"),
        st.sampled_from(NAMES),
        st.sampled_from(NAMES),
        st.integers(-5, 5_000),
        st.sampled_from(["CHF", "EUR"]),
    ),
    st.tuples(
        st.just("transfer"),
        st.sampled_from(NAMES),
        st.sampled_from(NAMES),
        st.integers(-5, 5_000),
        st.sampled_from(["CHF", "EUR", "USD"]),
    ),
    st.tuples(
        st.just("redeem"),
        st.sampled_from(NAMES),
        st.none(),
        st.integers(0, 5_000),
        st.sampled_from(["CHF", "EUR"]),
    ),
    st.tuples(
        st.just("status"),
        st.sampled_from(("alice", "bob", "carol")),
        st.sampled_from(["suspend", "reinstate", "ban"]),
        st.none(),
        st.none(),
    ),
)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(OPS, min_size=1, max_size=14))
def test_supply_equals_the_sum_of_balances_and_matches_the_model(ops):
    chain = Chain()
    model = chain.model()
    t = chain.text
    for who in ("alice", "bob", "carol"):
        chain.admit(who, ["trader"])
        model.admit(t(GO), t(who), ("trader",), ref(("legal", who)))
    for i, (op, a, b, amount, code) in enumerate(ops):
        if op == "mint":
            args, margs = (code, chain.addr(b), amount, ref(i)), (code, t(b), amount, ref(i))
            sender, fn = a, "mint"
        elif op == "transfer":
            args, margs = (code, chain.addr(b), amount), (code, t(b), amount)
            sender, fn = a, "transfer"
        elif op == "redeem":
            args, margs = (code, amount, ref(("r", i))), (code, amount, ref(("r", i)))
            sender, fn = a, "redeem"
        else:
            receipt = chain.tx(GO, "membership", b, chain.addr(a))
            try:
                getattr(model, b)(t(GO), t(a))
                expected = None
            except mm_error() as exc:
                expected = exc.code
            assert error_code(receipt) == expected
            continue
        receipt = chain.tx(sender, "fiat", fn, *args)
        try:
            getattr(model, fn)(t(sender), *margs)
            expected = None
        except mm_error() as exc:
            expected = exc.code
        assert error_code(receipt) == expected, (op, a, b, amount, code, receipt.error)
        for c in ("CHF", "EUR"):
            balances = [chain.balance(n, c) for n in NAMES]
            assert balances == [model.balance(c, t(n)) for n in NAMES]
            assert supply(chain, c) == sum(balances) == model.supply[c]


def mm_error():
    from market_harness import mm

    return mm.ModelError
