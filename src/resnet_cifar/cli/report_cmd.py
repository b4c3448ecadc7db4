"""`resnet-cifar report RUN_DIR`: build RUN_DIR/report/index.html and print its path."""

from __future__ import annotations

import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="build an HTML report of a finished (or running) training run",
        description="Build RUN_DIR/report/index.html: training curves, confusion matrix, per-class "
                    "numbers, calibration, misclassified images and a diagnosis of the run. On a "
                    "multi-seed directory, builds each seed's report and a summary page.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="directory written by `resnet-cifar train`")
    p.add_argument("--force", action="store_true",
                   help="multi-seed: rebuild seed reports that already exist")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines on stderr")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..report import build_report

    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    index = build_report(args.run_dir, log=log, force=args.force)
    print(index)
    return 0
