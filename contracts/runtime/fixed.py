"""``Fixed``: the runtime's fixed-point decimal, an integer mantissa with a decimal scale.

Prices, percentages and ratios in contracts need fractions but never floats. A
``Fixed`` is ``units / 10**scale`` with both parts integers, so every operation is
exact integer arithmetic and identical on every validator. Nothing rounds behind
the contract's back:

* ``+``, ``-`` and ``*`` are exact (the result's scale is the larger scale for ``+``
  and ``-``, the sum of the scales for ``*``, which may not exceed 36);
* anything that may lose digits takes an explicit rounding mode: ``a.div(b, scale,
  rounding)``, ``a.mul(b, scale, rounding)``, ``a.rescale(scale, rounding)``,
  ``a.to_int(rounding)``, ``a.pow(n, scale, rounding)``; ``rescale`` and ``to_int``
  without a mode are allowed only when they are exact;
* the modes are ``"down"`` (toward zero), ``"up"`` (away from zero), ``"floor"``,
  ``"ceiling"``, ``"half_up"`` (ties away from zero) and ``"half_even"`` (ties to
  the even neighbour: banker's rounding).

Construction: ``Fixed(5)`` is 5, ``Fixed(5, 2)`` is 5.00, ``Fixed("12.34")`` is 12.34
(scale 2), ``Fixed("12.34", 4)`` is 12.3400, ``Fixed.from_units(1234, 2)`` is 12.34.
Decimal text is plain ASCII: an optional sign, digits, optionally a point and digits.

``Fixed`` compares and hashes by value (``Fixed("1.50") == Fixed("1.5") == ...``) and
equals an ``int`` of the same value. Storage holds plain canonical values, so a
contract stores ``price.units`` (at a scale it fixes) rather than the ``Fixed``.
"""

from __future__ import annotations

from contracts.runtime import gas as G
from contracts.runtime.errors import ContractError, LimitExceeded

__all__ = ["Fixed", "ROUNDINGS", "round_div"]

ROUNDINGS = ("down", "up", "floor", "ceiling", "half_up", "half_even")
_ROUNDING_SET = frozenset(ROUNDINGS)
_MAX_BITS = G.MAX_INT_BITS
_MAX_SCALE = G.MAX_SCALE
_POW10 = [10**i for i in range(2 * _MAX_SCALE + 1)]
_DIGITS = frozenset("0123456789")


def _check_rounding(rounding: object) -> str:
    if rounding not in _ROUNDING_SET or type(rounding) is not str:
        raise ContractError(f"rounding must be one of {', '.join(ROUNDINGS)}")
    return rounding  # type: ignore[return-value]


def _check_scale(scale: object) -> int:
    if type(scale) is not int or not 0 <= scale <= _MAX_SCALE:
        raise ContractError(f"a Fixed scale is an integer from 0 to {_MAX_SCALE}")
    return scale  # type: ignore[return-value]


def round_div(n: int, d: int, rounding: str) -> int:
    """``n / d`` as an integer, rounded by ``rounding``. ``d`` must not be zero."""
    if d == 0:
        raise ContractError("division by zero")
    if d < 0:
        n, d = -n, -d
    q, r = divmod(n, d)  # q = floor(n / d), 0 <= r < d
    if r == 0:
        return q
    if rounding == "floor":
        return q
    if rounding == "ceiling":
        return q + 1
    if rounding == "down":
        return q if n >= 0 else q + 1
    if rounding == "up":
        return q + 1 if n >= 0 else q
    twice = 2 * r
    if twice < d:
        return q
    if twice > d:
        return q + 1
    if rounding == "half_up":
        return q + 1 if n >= 0 else q
    if rounding == "half_even":
        return q if q % 2 == 0 else q + 1
    raise ContractError(f"rounding must be one of {', '.join(ROUNDINGS)}")


def _pow10(n: int) -> int:
    return _POW10[n] if n < len(_POW10) else 10**n


class Fixed:
    """A decimal number ``units / 10**scale``; see the module docstring."""

    __slots__ = ("units", "scale")

    units: int
    scale: int

    def __init__(self, value: object, scale: object = None) -> None:
        if type(value) is Fixed:
            target = value.scale if scale is None else _check_scale(scale)
            units = value._units_at(target, None)
            self._set(units, target)
            return
        if type(value) is int or type(value) is bool:
            target = 0 if scale is None else _check_scale(scale)
            self._set(int(value) * _pow10(target), target)
            return
        if type(value) is str:
            units, digits = _parse(value)
            if scale is None:
                self._set(units, digits)
                return
            target = _check_scale(scale)
            if target < digits:
                raise ContractError(
                    f"Fixed(text, {target}) would drop digits; give a larger scale or use rescale(scale, rounding)"
                )
            self._set(units * _pow10(target - digits), target)
            return
        raise ContractError("Fixed() takes an int, a decimal string such as '12.34', or a Fixed")

    def _set(self, units: int, scale: int) -> None:
        if units.bit_length() > _MAX_BITS:
            raise LimitExceeded(f"a Fixed value's units would exceed {_MAX_BITS} bits")
        object.__setattr__(self, "units", units)
        object.__setattr__(self, "scale", scale)

    @classmethod
    def make(cls, units: int, scale: int) -> Fixed:
        """Internal constructor from parts (scale already validated by the caller)."""
        f = object.__new__(cls)
        f._set(units, scale)
        return f

    @classmethod
    def from_units(cls, units: object, scale: object) -> Fixed:
        """``Fixed.from_units(1234, 2)`` is 12.34."""
        if type(units) is not int:
            raise ContractError("Fixed.from_units(units, scale) takes integer units")
        return cls.make(units, _check_scale(scale))

    # ------------------------------------------------------------ conversions

    def _units_at(self, scale: int, rounding: str | None) -> int:
        if scale >= self.scale:
            return self.units * _pow10(scale - self.scale)
        divisor = _pow10(self.scale - scale)
        if rounding is None:
            if self.units % divisor:
                raise ContractError(
                    f"{self} does not fit scale {scale} exactly; pass a rounding mode ({', '.join(ROUNDINGS)})"
                )
            return self.units // divisor
        return round_div(self.units, divisor, rounding)

    def rescale(self, scale: object, rounding: object = None) -> Fixed:
        """This value at another scale; a rounding mode is needed when digits would be lost."""
        target = _check_scale(scale)
        mode = None if rounding is None else _check_rounding(rounding)
        return Fixed.make(self._units_at(target, mode), target)

    def to_int(self, rounding: object = None) -> int:
        """The integer value; a rounding mode is needed unless the value is whole."""
        mode = None if rounding is None else _check_rounding(rounding)
        return self._units_at(0, mode)

    # ------------------------------------------------------------ arithmetic

    @staticmethod
    def _coerce(other: object) -> Fixed | None:
        if type(other) is Fixed:
            return other  # type: ignore[return-value]
        if type(other) is int or type(other) is bool:
            return Fixed.make(int(other), 0)  # type: ignore[arg-type]
        return None

    def __add__(self, other: object) -> Fixed:
        o = Fixed._coerce(other)
        if o is None:
            return NotImplemented
        s = max(self.scale, o.scale)
        return Fixed.make(self._units_at(s, None) + o._units_at(s, None), s)

    __radd__ = __add__

    def __sub__(self, other: object) -> Fixed:
        o = Fixed._coerce(other)
        if o is None:
            return NotImplemented
        s = max(self.scale, o.scale)
        return Fixed.make(self._units_at(s, None) - o._units_at(s, None), s)

    def __rsub__(self, other: object) -> Fixed:
        o = Fixed._coerce(other)
        if o is None:
            return NotImplemented
        return o.__sub__(self)

    def __mul__(self, other: object) -> Fixed:
        o = Fixed._coerce(other)
        if o is None:
            return NotImplemented
        s = self.scale + o.scale
        if s > _MAX_SCALE:
            raise ContractError(
                f"Fixed product would have scale {s} (over {_MAX_SCALE}); use a.mul(b, scale, rounding)"
            )
        return Fixed.make(self.units * o.units, s)

    __rmul__ = __mul__

    def mul(self, other: object, scale: object, rounding: object) -> Fixed:
        """``self * other`` rounded to ``scale``."""
        o = Fixed._coerce(other)
        if o is None:
            raise ContractError("Fixed.mul takes a Fixed or an int")
        target = _check_scale(scale)
        mode = _check_rounding(rounding)
        exact_scale = self.scale + o.scale
        product = self.units * o.units
        if target >= exact_scale:
            return Fixed.make(product * _pow10(target - exact_scale), target)
        return Fixed.make(round_div(product, _pow10(exact_scale - target), mode), target)

    def div(self, other: object, scale: object, rounding: object) -> Fixed:
        """``self / other`` rounded to ``scale``."""
        o = Fixed._coerce(other)
        if o is None:
            raise ContractError("Fixed.div takes a Fixed or an int")
        target = _check_scale(scale)
        mode = _check_rounding(rounding)
        if o.units == 0:
            raise ContractError("division by zero")
        # self/o = (su / 10^ss) / (ou / 10^os); scaled by 10^target:
        #        = su * 10^(target + os - ss) / ou
        shift = target + o.scale - self.scale
        if shift >= 0:
            return Fixed.make(round_div(self.units * _pow10(shift), o.units, mode), target)
        return Fixed.make(round_div(self.units, o.units * _pow10(-shift), mode), target)

    def pow(self, exponent: object, scale: object, rounding: object) -> Fixed:
        """``self ** exponent`` (an integer from 0 to 256), computed exactly, then rounded to ``scale``."""
        if type(exponent) is not int or not 0 <= exponent <= 256:
            raise ContractError("Fixed.pow takes an integer exponent from 0 to 256")
        target = _check_scale(scale)
        mode = _check_rounding(rounding)
        if self.units.bit_length() * exponent > _MAX_BITS + 1:
            raise LimitExceeded(
                f"Fixed.pow result would exceed {_MAX_BITS} bits; rescale the base to fewer digits first"
            )
        units = self.units**exponent
        exact_scale = self.scale * exponent
        if target >= exact_scale:
            return Fixed.make(units * _pow10(target - exact_scale), target)
        return Fixed.make(round_div(units, _pow10(exact_scale - target), mode), target)

    def __neg__(self) -> Fixed:
        return Fixed.make(-self.units, self.scale)

    def __pos__(self) -> Fixed:
        return self

    def __abs__(self) -> Fixed:
        return Fixed.make(abs(self.units), self.scale)

    def __bool__(self) -> bool:
        return self.units != 0

    # ------------------------------------------------------------ comparison

    def _pair(self, other: object) -> tuple[int, int] | None:
        o = Fixed._coerce(other)
        if o is None:
            return None
        s = max(self.scale, o.scale)
        return self._units_at(s, None), o._units_at(s, None)

    def __eq__(self, other: object) -> bool:
        p = self._pair(other)
        return NotImplemented if p is None else p[0] == p[1]

    def __ne__(self, other: object) -> bool:
        p = self._pair(other)
        return NotImplemented if p is None else p[0] != p[1]

    def __lt__(self, other: object) -> bool:
        p = self._pair(other)
        return NotImplemented if p is None else p[0] < p[1]

    def __le__(self, other: object) -> bool:
        p = self._pair(other)
        return NotImplemented if p is None else p[0] <= p[1]

    def __gt__(self, other: object) -> bool:
        p = self._pair(other)
        return NotImplemented if p is None else p[0] > p[1]

    def __ge__(self, other: object) -> bool:
        p = self._pair(other)
        return NotImplemented if p is None else p[0] >= p[1]

    def __hash__(self) -> int:
        units, scale = self.units, self.scale
        while scale and units % 10 == 0:
            units //= 10
            scale -= 1
        return hash(units) if scale == 0 else hash((units, scale))

    # ------------------------------------------------------------ text

    def __str__(self) -> str:
        if self.scale == 0:
            return str(self.units)
        sign = "-" if self.units < 0 else ""
        digits = str(abs(self.units)).rjust(self.scale + 1, "0")
        return f"{sign}{digits[: -self.scale]}.{digits[-self.scale :]}"

    def __repr__(self) -> str:
        return f"Fixed('{self}')"

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Fixed values are immutable")

    def __reduce__(self):  # keeps Fixed picklable for the isolated worker despite __setattr__
        return (Fixed.make, (self.units, self.scale))


def _parse(text: str) -> tuple[int, int]:
    """Parse ASCII decimal text into (units, digits after the point)."""
    if len(text) > G.MAX_INT_TEXT:
        raise LimitExceeded(f"decimal text longer than {G.MAX_INT_TEXT} characters")
    body = text[1:] if text[:1] in ("-", "+") else text
    whole, point, frac = body.partition(".")
    if not whole or not set(whole) <= _DIGITS or (point and (not frac or not set(frac) <= _DIGITS)):
        raise ContractError("Fixed text must be a decimal number such as '12.34' or '-5' (ASCII digits, one optional point)")
    if len(frac) > _MAX_SCALE:
        raise ContractError(f"decimal text has more than {_MAX_SCALE} digits after the point")
    units = int(whole + frac)
    if text[:1] == "-":
        units = -units
    if units.bit_length() > _MAX_BITS:
        raise LimitExceeded(f"decimal value exceeds {_MAX_BITS} bits")
    return units, len(frac)
