"""`brainseg report`: rebuild a comparison's leaderboard, tests, figures and report from its files."""

from __future__ import annotations

import argparse

DESCRIPTION = (
    "Rebuild the report of a comparison folder made by `brainseg compare` from its files alone (no model "
    "is loaded): leaderboard.csv/.md, significance.csv (paired Wilcoxon tests with Holm correction), "
    "figures/*.png, report.md and a self-contained report.html."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", metavar="DIR", help="a comparison folder (holds protocol.json and runs/)")
    p.add_argument("--alpha", type=float, default=0.05, help="family-wise significance level (default 0.05)")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples for confidence intervals (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")


def run(args: argparse.Namespace) -> int:
    from brainseg.errors import BrainsegError
    from brainseg.reporting.comparison import read_table
    from brainseg.reporting.report import build_report, leaderboard_text

    if not 0 < args.alpha < 1:
        raise BrainsegError(f"--alpha must be in (0, 1), got {args.alpha}")
    if args.n_boot < 1:
        raise BrainsegError(f"--n-boot must be at least 1, got {args.n_boot}")
    written = build_report(args.dir, alpha=args.alpha, n_boot=args.n_boot, seed=args.seed)
    print(leaderboard_text(read_table(written["leaderboard_csv"])))
    print()
    width = max(map(len, written), default=0) + 2
    for name, path in written.items():
        print(f"{name:<{width}}{path}")
    return 0
