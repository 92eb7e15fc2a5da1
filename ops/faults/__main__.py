"""``python -m ops.faults`` / ``make faults``: the CLI of the fault campaign (wiring only)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import ops.faults
from ops.catalog import CatalogError
from ops.faults.campaign import Options, run_campaign, say
from ops.faults.config import SIZES
from ops.faults.stack import CampaignError
from ops.faults.tables import render
from ops.procs import Interrupted
from ops.stages import REPO


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ops.faults", description=(ops.faults.__doc__ or "").split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=ops.faults.__doc__)
    ap.add_argument("--size", choices=sorted(SIZES), default="full")
    ap.add_argument("--seed", type=int, help="random seed of the schedule and moments (default: random, printed)")
    ap.add_argument("--out", type=Path, default=REPO / "reports", help="parent of the run folder (default reports/)")
    ap.add_argument("--stack-dir", type=Path, help="folder of a private stack to use (created if needed)")
    ap.add_argument("--keep-stack", action="store_true", help="leave the private stack running afterwards")
    ap.add_argument("--keep-data", action="store_true", help="keep the run's catalog database and store files")
    ap.add_argument("--brokers", type=int, default=1, help="3: a 3-node KRaft cluster, RF 3 / min ISR 2, and the "
                    "broker-leader kills and rolling restart (issue #19)")
    ap.add_argument("--lake", choices=("folder", "s3"), default="folder",
                    help="s3: the lake on S3Proxy, and the object store outage (issue #19)")
    ap.add_argument("--port-base", type=int, help="the private stack's ports at fixed offsets from this one "
                    "(PG +32, registry +81, broker +92, S3 +300; the 3-node cluster always takes a free block "
                    "below the ephemeral range) instead of random free ports")
    ap.add_argument("--only-scaling", action="store_true", help="only the faults of the cluster and the S3 lake "
                    "(leader kills, rolling restart, object store outage) on the size's data")
    a = ap.parse_args(argv)
    opts = Options(a.size, a.out, a.seed, a.stack_dir, a.keep_stack, a.keep_data, a.brokers, a.lake, a.port_base,
                   a.only_scaling)
    try:
        result = run_campaign(opts)
    except (CampaignError, CatalogError) as exc:
        print(f"campaign failed: {exc}", file=sys.stderr)
        return 2
    except Interrupted:
        print("interrupted", file=sys.stderr)
        return 130
    render(result, say)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
