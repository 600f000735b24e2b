"""The long form of the SIGKILL test: ``.venv/bin/python tests/soak_crash.py --cycles 50``.

Runs :func:`test_crash_recovery.crash_run` (4 BFT validators and an observer under load,
a validator killed with SIGKILL and restarted every few seconds, the leader every other
time) and prints one JSON line with what it saw; it exits 1, after the failure's
report, when a committed transaction is missing anywhere, two nodes disagree on a
block, or the shard stops committing. The devnet lives in a temporary directory that is
deleted unless ``--keep`` is given (it is kept on failure, for its logs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from test_crash_recovery import crash_run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--seed", type=int, default=20260301)
    parser.add_argument("--protocol", choices=("bft", "raft"), default="bft")
    parser.add_argument("--keep", action="store_true", help="keep the devnet directory")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="gridledger-soak-"))
    validators = 4 if args.protocol == "bft" else 3
    try:
        result = asyncio.run(crash_run(root / "net", cycles=args.cycles, seed=args.seed, protocol=args.protocol,
                                       validators=validators, log=lambda line: print(line, file=sys.stderr)))
    except Exception:
        traceback.print_exc()
        print(json.dumps({"ok": False, "cycles": args.cycles, "seed": args.seed, "dir": str(root)}))
        return 1
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({"ok": True, **result, "seed": args.seed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
