"""Differential test: random operation sequences through the contracts AND the reference
model (tests/market_model.py), compared after every step.

Each step is one transaction of membership, fiat or energy_tokens (emit, offer, buy,
allocate, split, merge, withdrawal, procurement, redispatch, transfers, limits,
suspensions, time passing). After each step the refusal code must be the model's, and
balances, supplies, every token (status, sides, prices, characteristics, lineage), net
positions, point positions, the VWAP accumulators, final consumption and the offers
view must equal the model's to the unit.
"""

from __future__ import annotations

from functools import partial

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from market_harness import Chain, error_code, mm, ref

GO = "grid_operator"
PEOPLE = ("p1", "p2", "t", "c1", "c2")
ROLES = {
    "p1": ("producer",),
    "p2": ("producer",),
    "t": ("trader",),
    "c1": ("consumer",),
    "c2": ("consumer", "retailer"),
}
METERS = (
    ("m_p1", "p1", "production", "solar", 40),
    ("m_p2", "p2", "production", "wind", 11),
    ("m_c1", "c1", "consumption", "other", 0),
    ("m_c2", "c2", "consumption", "other", 0),
)
PERIODS = range(5, 12)  # gate closure of period 5 is 1 h 15 min after genesis
CATEGORIES = ("solar", "wind", "other")
FIELDS = (
    "first_period",
    "last_period",
    "energy_wh",
    "category",
    "co2_mg",
    "face_value",
    "currency",
    "payment_term_s",
    "purpose",
    "status",
    "parents",
    "children",
)


class Pair:
    """The chain and the model, driven together."""

    def __init__(self) -> None:
        self.chain = chain = Chain(params={"energy_unit_wh": 10})
        self.model = model = chain.model()
        self.t = chain.text
        go = self.t(GO)
        for who in PEOPLE:
            chain.admit(who, ROLES[who])
            model.admit(go, self.t(who), ROLES[who], ref(("legal", who)))
        for mid, owner, kind, cat, co2 in METERS:
            chain.ok(
                GO,
                "meters",
                "register_meter",
                chain.addr(mid),
                chain.addr(owner),
                kind,
                cat,
                "loc",
                10_000_000,
                co2,
            )
            model.register_meter(go, self.t(mid), self.t(owner), kind, cat, "loc", 10_000_000, co2)
            chain.ok(owner, "meters", "attest_meter", chain.addr(mid))
            model.attest_meter(self.t(owner), self.t(mid))
        for who in (*PEOPLE, GO):
            for code, amount in (("CHF", 2_000), ("EUR", 300)):
                r = ref(("deposit", who, code))
                chain.ok("bank", "fiat", "mint", code, chain.addr(who), amount, r)
                model.mint(self.t("bank"), code, self.t(who), amount, r)
        self.names = {
            chain.addr(n): n
            for n in (*PEOPLE, GO, "bank", "co2_authority", *(m[0] for m in METERS), "nowhere")
        }
        self.steps: list = []
        # an opening book, so random steps mostly act on tokens that exist
        for who, first, last, cat, co2, point, offer in (
            ("p1", 6, 7, "solar", 40, ("producer", "m_p1"), ("consumer", 100)),
            ("p2", 8, 9, "wind", 11, ("producer", "m_p2"), ("consumer", 0)),
            ("t", 10, 10, "other", 300, None, ("producer", -20)),
            ("c1", 7, 7, "other", 128, ("consumer", "m_c1"), None),
        ):
            pp = self.chain.addr(point[1]) if point and point[0] == "producer" else None
            cp = self.chain.addr(point[1]) if point and point[0] == "consumer" else None
            args = [first, last, 1000, cat, co2, 10, "CHF", 0, pp, cp]
            self.step(
                who,
                "energy_tokens",
                "emit",
                args,
                partial(
                    model.emit,
                    self.t(who),
                    first_period=first,
                    last_period=last,
                    energy_wh=1000,
                    category=cat,
                    co2_g_per_kwh=co2,
                    face_value=10,
                    currency="CHF",
                    producer_point=pp and self.t(point[1]),
                    consumer_point=cp and self.t(point[1]),
                ),
            )
            if offer:
                serial = len(model.tokens)
                self.step(
                    who,
                    "energy_tokens",
                    "offer_side",
                    [serial, offer[0], offer[1], "CHF"],
                    partial(model.offer_side, self.t(who), serial, offer[0], offer[1], "CHF"),
                )

    def text_of(self, value):
        if isinstance(value, bytes) and len(value) == 20:
            return self.t(self.names[value])
        return value

    def step(self, who: str, contract: str, function: str, args: list, model_call) -> None:
        receipt = self.chain.tx(who, contract, function, *args)
        moved = len(self.model.movements)
        try:
            model_call()
            expected = None
        except mm.ModelError as exc:
            expected = exc.code
        self.steps.append((who, function, args, error_code(receipt)))
        assert error_code(receipt) == expected, (who, function, args, receipt.error, expected)
        # every movement of money is an event, in the model's order, with its reason
        events = []
        for e in receipt.events:
            f = dict(e.fields)
            if e.name == "Transferred":
                events.append((f["currency"], self.text_of(f["frm"]), self.text_of(f["to"]), f["amount"], f["reason"]))
            elif e.name == "FeePaid":
                events.append((f["currency"], self.text_of(f["payer"]), self.text_of(f["issuer"]), f["amount"], "issuer_fee"))
        want = [(m.currency, m.frm, m.to, m.amount, m.reason) for m in self.model.movements[moved:] if m.frm and m.to]
        assert events == want, (function, args)

    def compare(self) -> None:
        chain, model, t = self.chain, self.model, self.t
        for code in ("CHF", "EUR"):
            balances = {n: chain.balance(n, code) for n in (*PEOPLE, GO, "bank")}
            assert balances == {n: model.balance(code, t(n)) for n in balances}
            assert (
                chain.view("fiat", "supply_of", code)
                == model.supply[code]
                == model.total_balances(code)
            )
        serials = list(range(1, chain.view("energy_tokens", "next_serial")))
        assert serials == sorted(model.tokens)
        got_tokens = [
            x
            for k in range(0, len(serials), 16)
            for x in chain.view("energy_tokens", "tokens", serials[k : k + 16])
        ]
        for serial, got in zip(serials, got_tokens, strict=True):
            want = model.tokens[serial]
            assert {f: got[f] for f in FIELDS} == {
                f: (list(getattr(want, f)) if f in ("parents", "children") else getattr(want, f))
                for f in FIELDS
            }, serial
            for name in ("producer", "consumer"):
                s, ws = got[name], want.side(name)
                assert (
                    t(self.names[s["owner"]]),
                    self.text_of(s["point"]),
                    s["price"],
                    s["currency"],
                ) == (ws.owner, ws.point, ws.price, ws.price_currency), (serial, name)
            assert got["withdrawal"] == {
                k: (list(v) if v else None) for k, v in want.withdrawal.items()
            }
            assert got["qualification"] == [list(q) for q in want.qualification]
            proposal = got["withdrawal_proposal"]
            assert (proposal and [proposal[0], t(self.names[proposal[1]])]) == (
                want.withdrawal_proposal and list(want.withdrawal_proposal)
            )
        for p in PERIODS:
            for who in (*PEOPLE, GO):
                assert chain.view(
                    "energy_tokens", "net_position", chain.addr(who), p
                ) == model.net_position(t(who), p), (who, p)
            want_points = {
                k: v for k, v in model.positions_at(p, include_offsets=False).items() if v
            }
            listed = chain.view("energy_tokens", "points_at", p, 0, 1000)
            got_points = {
                self.text_of(pt): chain.view("energy_tokens", "point_position", p, pt)
                for pt in listed
            }
            assert {k: v for k, v in got_points.items() if v} == want_points, p
            num = den = fc = 0
            for tok in model._covering(p):
                if (
                    tok.purpose in ("market", "grid_loss")
                    and tok.currency == "CHF"
                    and tok.producer.owner != tok.consumer.owner
                ):
                    num += tok.energy_wh * tok.face_value
                    den += tok.energy_wh
                if model._is_meter(tok.consumer.point, "consumption"):
                    fc += tok.energy_wh
            assert chain.view("energy_tokens", "vwap_acc", p) == [num, den]
            assert chain.view("energy_tokens", "final_consumption", p) == fc
        model.now = chain.time
        offers = chain.view("energy_tokens", "offers")
        assert offers["next"] is None
        assert [
            {**o, "owner": t(self.names[o["owner"]])} for o in offers["offers"]
        ] == model.offers()


MY_METERS = {(m[1], "producer" if m[2] == "production" else "consumer"): m[0] for m in METERS}


def point_for(pair: Pair, data, who: str, side: str) -> tuple:
    """Mostly a valid point (the owner's address or its own meter of the right kind)."""
    choice = data.draw(st.sampled_from(["own", "own", "own", "mine", "mine", "meter", "nowhere"]))
    if choice == "own" or (choice == "mine" and (who, side) not in MY_METERS):
        return pair.chain.addr(who), pair.t(who)
    if choice == "mine":
        name = MY_METERS[(who, side)]
    else:
        name = (
            data.draw(st.sampled_from([m[0] for m in METERS])) if choice == "meter" else "nowhere"
        )
    return pair.chain.addr(name), pair.t(name)


def terms(data):
    return data.draw(
        st.one_of(st.none(), st.tuples(st.sampled_from([0, 1800, 7200]), st.integers(0, 5)))
    )


def pick_serial(pair: Pair, data, want=None) -> int:
    """Mostly an open token (``want(token)`` narrows it), sometimes any or an unknown one."""
    tokens = pair.model.tokens
    live = [
        s
        for s, tok in sorted(tokens.items())
        if tok.status == "open" and (want is None or want(tok))
    ]
    kind = data.draw(st.sampled_from(["live"] * 8 + ["any", "unknown"]), label="serial kind")
    if kind == "live" and live:
        return data.draw(st.sampled_from(live), label="serial")
    if kind == "any" and tokens:
        return data.draw(st.sampled_from(sorted(tokens)), label="serial")
    return len(tokens) + 1


def offered(side):
    return lambda tok: tok.side(side).price is not None


def one_owner(tok) -> bool:
    return tok.producer.owner == tok.consumer.owner


def actor(pair: Pair, data, tok, side: str) -> str:
    """Mostly the owner of ``side`` of ``tok`` (when it is a participant), else anyone."""
    if tok is not None and data.draw(st.sampled_from([True, True, True, False])):
        owner = pair.name_of_text(tok.side(side).owner)
        if owner != GO:
            return owner
    return data.draw(st.sampled_from(PEOPLE), label="who")


OPS = (
    ["emit"] * 3
    + ["offer"] * 3
    + ["buy"] * 4
    + [
        "allocate",
        "split_volume",
        "split_volume",
        "split_period",
        "merge",
        "merge",
        "propose",
        "accept",
        "unilateral",
        "procure",
        "redispatch",
        "redispatch",
        "transfer",
        "limit",
        "status",
        "time",
    ]
)


def run_op(pair: Pair, data) -> None:
    chain, model, t = pair.chain, pair.model, pair.t
    side = data.draw(st.sampled_from(["producer", "consumer"]), label="side")
    op = data.draw(st.sampled_from(OPS), label="op")
    model.now = chain.time
    if op == "emit":
        who = data.draw(st.sampled_from(PEOPLE), label="who")
        first = data.draw(st.sampled_from(PERIODS))
        last = first + data.draw(st.integers(0, 2))
        e = data.draw(st.sampled_from([10, 500, 1000, 2000, 15]))
        cat = data.draw(st.sampled_from(CATEGORIES))
        co2 = data.draw(st.integers(0, 50))
        face = data.draw(st.integers(-5, 20))
        cur = data.draw(st.sampled_from(["CHF", "CHF", "EUR"]))
        ppoint, mpp = point_for(pair, data, who, "producer")
        cpoint, mcp = point_for(pair, data, who, "consumer")
        pw, cw = terms(data), terms(data)
        qual = data.draw(st.sampled_from([None, {"redispatch": (0, 3)}, {"tertiary": (600, 9)}]))
        args = [
            first,
            last,
            e,
            cat,
            co2,
            face,
            cur,
            0,
            ppoint,
            cpoint,
            list(pw) if pw else None,
            list(cw) if cw else None,
            [[k, *v] for k, v in qual.items()] if qual else None,
        ]
        pair.step(
            who,
            "energy_tokens",
            "emit",
            args,
            lambda: model.emit(
                t(who),
                first_period=first,
                last_period=last,
                energy_wh=e,
                category=cat,
                co2_g_per_kwh=co2,
                face_value=face,
                currency=cur,
                producer_point=mpp,
                consumer_point=mcp,
                producer_withdrawal=pw,
                consumer_withdrawal=cw,
                qualification=qual,
            ),
        )
    elif op == "offer":
        serial = pick_serial(pair, data)
        who = actor(pair, data, model.tokens.get(serial), side)
        price = data.draw(st.one_of(st.none(), st.integers(-100, 300)))
        cur = data.draw(st.sampled_from(["CHF", "CHF", "EUR", "USD"]))
        pair.step(
            who,
            "energy_tokens",
            "offer_side",
            [serial, side, price, cur],
            lambda: model.offer_side(t(who), serial, side, price, cur),
        )
    elif op in ("buy", "procure"):
        book = [
            (n, x)
            for n, tok in sorted(model.tokens.items())
            for x in ("producer", "consumer")
            if tok.status == "open" and tok.side(x).price is not None
        ]
        if book and data.draw(st.sampled_from([True, True, True, False])):
            serial, side = data.draw(st.sampled_from(book), label="offer")
        else:
            serial = pick_serial(pair, data)
        tok = model.tokens.get(serial)
        s = tok.side(side) if tok else None
        right = (
            data.draw(st.sampled_from([True, True, True, False]))
            and s is not None
            and s.price is not None
        )
        price = s.price if right else data.draw(st.integers(-100, 300))
        cur = s.price_currency if right else "CHF"
        if op == "buy":
            who = data.draw(st.sampled_from(PEOPLE), label="who")
            point, mp = point_for(pair, data, who, side)
            pair.step(
                who,
                "energy_tokens",
                "buy_side",
                [serial, side, price, cur, point],
                lambda: model.buy_side(t(who), serial, side, price, cur, mp),
            )
        else:
            purpose = data.draw(st.sampled_from(["balancing", "grid_loss"]))
            pair.step(
                GO,
                "energy_tokens",
                "procure",
                [serial, side, purpose, price, cur],
                lambda: model.procure(t(GO), serial, side, purpose, price, cur),
            )
    elif op == "allocate":
        serial = pick_serial(pair, data)
        who = actor(pair, data, model.tokens.get(serial), side)
        point, mp = point_for(pair, data, who, side)
        pair.step(
            who,
            "energy_tokens",
            "allocate_side",
            [serial, side, point],
            lambda: model.allocate_side(t(who), serial, side, mp),
        )
    elif op == "split_volume":
        serial = pick_serial(pair, data, one_owner)
        tok = model.tokens.get(serial)
        who = actor(pair, data, tok, side)
        total = tok.energy_wh if tok else 1000
        cut = data.draw(st.integers(0, total // 10)) * 10
        parts = (
            [cut, total - cut]
            if data.draw(st.sampled_from([True, True, False]))
            else [cut, total - cut + 10]
        )
        pair.step(
            who,
            "energy_tokens",
            "split_volume",
            [serial, parts],
            lambda: model.split_volume(t(who), serial, parts),
        )
    elif op == "split_period":
        serial = pick_serial(pair, data, one_owner)
        tok = model.tokens.get(serial)
        who = actor(pair, data, tok, side)
        at = data.draw(st.integers(4, 14))
        pair.step(
            who,
            "energy_tokens",
            "split_period",
            [serial, at],
            lambda: model.split_period(t(who), serial, at),
        )
    elif op == "merge":
        groups: dict = {}
        for n, x in sorted(model.tokens.items()):
            if x.status == "open":
                key = (
                    x.category,
                    x.face_value,
                    x.currency,
                    repr(x.withdrawal),
                    x.qualification,
                    x.purpose,
                    x.producer.point,
                    x.consumer.point,
                    x.producer.owner,
                    x.consumer.owner,
                )
                groups.setdefault(key, []).append(n)
        mergeable = [g for g in groups.values() if len(g) > 1]
        if mergeable and data.draw(st.sampled_from([True, True, True, False])):
            group = data.draw(st.sampled_from(mergeable))
            serials = data.draw(
                st.lists(st.sampled_from(group), min_size=2, max_size=3, unique=True)
            )
        else:
            serials = data.draw(
                st.lists(st.integers(1, len(model.tokens) + 1), min_size=1, max_size=3)
            )
        tok = model.tokens.get(serials[0])
        who = actor(pair, data, tok, side)
        pair.step(who, "energy_tokens", "merge", [serials], lambda: model.merge(t(who), serials))
    elif op in ("propose", "accept", "unilateral"):
        serial = pick_serial(pair, data)
        who = actor(pair, data, model.tokens.get(serial), side)
        if op == "propose":
            pair.step(
                who,
                "energy_tokens",
                "propose_withdrawal",
                [serial],
                lambda: model.propose_withdrawal(t(who), serial),
            )
        elif op == "accept":
            pair.step(
                who,
                "energy_tokens",
                "accept_withdrawal",
                [serial],
                lambda: model.accept_withdrawal(t(who), serial),
            )
        else:
            pair.step(
                who,
                "energy_tokens",
                "withdraw_unilateral",
                [serial, side],
                lambda: model.withdraw_unilateral(t(who), serial, side),
            )
    elif op == "redispatch":
        serial = pick_serial(pair, data)
        tok = model.tokens.get(serial)
        comp = data.draw(st.integers(-1, 6))
        fp = lp = None
        if tok is not None and data.draw(st.booleans()):
            fp = data.draw(st.integers(tok.first_period - 1, tok.last_period))
            lp = data.draw(st.integers(fp, tok.last_period + 1))
        pair.step(
            GO,
            "energy_tokens",
            "redispatch",
            [serial, side, comp, fp, lp],
            lambda: model.redispatch(t(GO), serial, side, comp, fp, lp),
        )
    elif op == "transfer":
        who = data.draw(st.sampled_from(PEOPLE), label="who")
        to = data.draw(st.sampled_from((*PEOPLE, GO)))
        amount = data.draw(st.integers(1, 3_000))
        pair.step(
            who,
            "fiat",
            "transfer",
            ["CHF", chain.addr(to), amount],
            lambda: model.transfer(t(who), "CHF", t(to), amount),
        )
    elif op == "limit":
        who = data.draw(st.sampled_from(PEOPLE), label="who")
        limit = data.draw(st.one_of(st.none(), st.sampled_from([0, 500, 1000, 3000])))
        pair.step(
            GO,
            "membership",
            "set_position_limit",
            [chain.addr(who), limit],
            lambda: model.set_position_limit(t(GO), t(who), limit),
        )
    elif op == "status":
        suspended = [n for n in PEOPLE if model.members[t(n)].status == "suspended"]
        if suspended and data.draw(st.sampled_from([True, True, False])):
            who, fn = data.draw(st.sampled_from(suspended)), "reinstate"
        else:
            who, fn = data.draw(st.sampled_from(PEOPLE), label="who"), "suspend"
        pair.step(
            GO, "membership", fn, [chain.addr(who)], lambda: getattr(model, fn)(t(GO), t(who))
        )
    else:
        chain.advance(data.draw(st.sampled_from([60, 300, 900])))
        model.set_time(chain.time)


def _owner_name(self: Pair, tok) -> str:
    return self.name_of_text(tok.producer.owner)


def _name_of_text(self: Pair, text: str) -> str:
    return next(n for n in (*PEOPLE, GO) if self.t(n) == text)


Pair.owner_name = _owner_name  # type: ignore[attr-defined]
Pair.name_of_text = _name_of_text  # type: ignore[attr-defined]


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.data())
def test_random_market_sequences_match_the_model(data):
    pair = Pair()
    pair.compare()
    for _ in range(data.draw(st.integers(10, 40), label="steps")):
        run_op(pair, data)
        pair.compare()
