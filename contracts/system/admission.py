"""The node's admission policy for a shard running the market (MARKET.md section 4).

:func:`market_admission` is an ``contracts.executor.AdmissionPolicy``: given the state
as of the current point of the block, a transaction and its sender's address, it
returns ``None`` to admit or ``(code, message)`` to refuse before execution (nothing
changes, not even the nonce). It reads one key, the sender's
``state_key("membership", "member", [address])``, plus a second only to refuse a
non-member (a deployer's deployment, a chain without the market):

* ``not_member``: the sender is not an admitted member [I 1];
* ``not_allowed``: a meter calling anything but its readings; a member without a role
  the function needs (grid-operator functions, minting, emitting and buying); anyone
  calling an entry point reserved for another contract;
* ``not_active``: a suspended or banned member, except for what MARKET.md section 4's
  status table still allows it (suspended: redeem, approve, deposit collateral;
  banned: redeem, approve), so money is never confiscated and a debtor can cure.

The contracts check everything again (defence in depth); this table only has to be a
subset of what they accept. Functions it does not list are open to active members.
"""

from __future__ import annotations

from contracts.runtime.engine import SYSTEM, contract_record_key, deployer_key
from contracts.runtime.storage import decode_value
from ledger.crypto import Address
from ledger.statekeys import state_key

__all__ = ["CONTRACT_ONLY", "MARKET_ROLES", "ROLE_RULES", "market_admission", "member_key"]

GRID_OPERATOR = frozenset({"grid_operator"})
MARKET_ROLES = frozenset({"producer", "consumer", "trader", "retailer"})
METER = frozenset({"meter"})

# (contract, function) -> the roles one of which the sender must hold.
ROLE_RULES: dict[tuple[str, str], frozenset[str]] = {
    **{
        ("membership", f): GRID_OPERATOR
        for f in (
            "admit",
            "set_roles",
            "suspend",
            "reinstate",
            "ban",
            "set_position_limit",
            "set_rating",
        )
    },
    ("fiat", "mint"): frozenset({"bank"}),
    ("energy_tokens", "emit"): MARKET_ROLES,
    ("energy_tokens", "buy_side"): MARKET_ROLES,
    ("energy_tokens", "procure"): GRID_OPERATOR,
    ("energy_tokens", "redispatch"): GRID_OPERATOR,
    **{
        ("meters", f): GRID_OPERATOR
        for f in ("register_meter", "suspend_meter", "reinstate_meter", "correct_reading")
    },
    ("meters", "submit_reading"): METER,
    ("meters", "submit_readings"): METER,
    ("reconciliation", "reconcile_period"): GRID_OPERATOR,
    ("grid_fees", "publish_transmission_cost"): GRID_OPERATOR,
    ("grid_fees", "charge_security_of_supply"): GRID_OPERATOR,
    ("settlement", "run_settlement"): GRID_OPERATOR,
    ("grid_fees", "abandon_security_of_supply"): GRID_OPERATOR,
    # the native cross-shard module (shards/native.py): only consumers buy from outside
    # their shard [P 4.4]; the grid operator registers bridges and redispatches flows.
    # deliver, settle and submit_evidence are open to every active member (relayers).
    ("bridge", "open_flow"): frozenset({"consumer"}),
    ("bridge", "register_bridge"): GRID_OPERATOR,
    ("bridge", "redispatch"): GRID_OPERATOR,
}

# Entry points that only another system contract may call: no transaction reaches them.
CONTRACT_ONLY = frozenset(
    {
        ("membership", "add_meter"),
        ("fiat", "pay"),
        ("fiat", "pay_from"),
        ("energy_tokens", "create_offset"),
        ("energy_tokens", "add_grid_fee"),
        ("energy_tokens", "mark_obligated"),
        ("meters", "close_period"),
        ("settlement", "add_obligation"),
        # the bridge module's entry points (MARKET.md section 12)
        ("fiat", "bridge_lock"),
        ("fiat", "bridge_pay"),
        ("fiat", "bridge_send"),
        ("fiat", "bridge_receive"),
        ("energy_tokens", "bridge_buy_offer"),
        ("energy_tokens", "bridge_revert_offer"),
        ("energy_tokens", "bridge_create_hop_token"),
        ("energy_tokens", "bridge_cancel_hop_token"),
    }
)

# What a member that is not active may still do (MARKET.md section 4).
STILL_ALLOWED = {
    "suspended": frozenset(
        {("fiat", "redeem"), ("fiat", "approve"), ("settlement", "deposit_collateral")}
    ),
    "banned": frozenset({("fiat", "redeem"), ("fiat", "approve")}),
}

_ROLES, _STATUS = 0, 1
_MEMBERSHIP_RECORD = contract_record_key("membership")


def member_key(address: bytes) -> bytes:
    return state_key("membership", "member", [address])


def market_admission(view, tx, address: bytes) -> tuple[str, str] | None:
    """Admit (None) or refuse ``(code, message)`` a transaction signed by ``address``."""
    raw = view.get(member_key(address))
    call = (tx.contract, tx.function)
    if raw is None:
        if tx.contract == SYSTEM and view.get(deployer_key(address)) is not None:
            return None  # genesis deployers deploy; the executor checks the role
        if view.get(_MEMBERSHIP_RECORD) is None:
            return None  # no market on this chain: nothing to be a member of
        return (
            "not_member",
            f"{Address(address)} is not a member of this shard; the grid operator admits participants",
        )
    record = decode_value(raw)
    roles, status = record[_ROLES], record[_STATUS]
    if call in CONTRACT_ONLY:
        return (
            "not_allowed",
            f"{tx.contract}.{tx.function} is called by the market's contracts, not by transactions",
        )
    if "meter" in roles:
        if ROLE_RULES.get(call) is METER:
            return None
        return (
            "not_allowed",
            "a meter signs only its readings (meters.submit_reading, meters.submit_readings)",
        )
    if status != "active" and call not in STILL_ALLOWED.get(status, ()):
        return ("not_active", f"{Address(address)} is {status}: it may no longer trade or settle")
    need = ROLE_RULES.get(call)
    if need is not None and need.isdisjoint(roles):
        return (
            "not_allowed",
            f"{tx.contract}.{tx.function} needs one of the roles {', '.join(sorted(need))}",
        )
    return None
