"""Check contract sources before deploying them: ``python -m contracts.runtime FILE...``.

Prints ``FILE: ok`` with the contract's exports, or where and why it is refused
(plus CPython's own syntax message, which receipts never carry). Exit status 0 when
every file passes, 1 otherwise, 2 on a usage error.
"""

from __future__ import annotations

import sys
from pathlib import Path

from contracts.runtime.checker import check
from contracts.runtime.errors import ContractError


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 2 if not argv else 0
    status = 0
    for name in argv:
        try:
            checked = check(Path(name).read_text(encoding="utf-8"))
        except OSError as exc:
            print(f"{name}: cannot read: {exc.strerror}")
            status = 1
        except ContractError as exc:
            print(f"{name}: {exc.message}" + (f"\n    ({exc.detail})" if exc.detail else ""))
            status = 1
        else:
            exports = ", ".join(sorted(checked.exports)) or "none"
            print(f"{name}: ok (exports: {exports})")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
