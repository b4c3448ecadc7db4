"""The run report: `build_report(run_dir)` writes RUN_DIR/report/index.html with curves, confusion
matrix, per-class numbers, calibration, example images and a diagnosis of the run.

Rooms: metrics.py (reading the run directory), confusion.py, calibration.py, examples.py (which
images to show), diagnosis.py (the troubleshooting rules), plots.py (PNG figures), html.py (the
page), build.py (putting it together, multi-seed summaries).
"""

from __future__ import annotations


def build_report(run_dir, images=None, log=None, force: bool = False):
    """Build RUN_DIR/report/ and return the Path of its index.html (see build.build_report)."""
    # Imported on call so `import resnet_cifar.report` stays free (numpy/yaml only when used).
    from .build import build_report as _build

    return _build(run_dir, images=images, log=log, force=force)


__all__ = ["build_report"]
