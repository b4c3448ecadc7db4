"""keep_host_memory: big freed CPU buffers are reused instead of unmapped and faulted in again.

Each case runs in a fresh interpreter, since the setting is process-wide and cannot be undone
to glibc's adaptive mode. The measure is the process's minor page faults over repeated
allocate-touch-free rounds of a 64 MiB tensor (above glibc's largest mmap threshold), and the
resident size, which must settle rather than grow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from resnet_cifar import runtime

pytestmark = pytest.mark.skipif(runtime._libc() is None, reason="glibc's mallopt is needed")

PROBE = r"""
import json, resource, sys
import torch
from resnet_cifar import runtime
mode = sys.argv[1]
applied = None if mode == "untouched" else runtime.keep_host_memory(mode == "keep")
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def rss_mib():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() >> 20
def rounds(n):
    for _ in range(n):
        t = torch.empty(16 << 20)                     # 64 MiB of float32
        t.fill_(1.0)                                  # touch every page
        del t
rounds(24)     # warm-up: the heap settles (aligned blocks take a dozen rounds or so to coalesce)
before, rss_before = faults(), rss_mib()
rounds(8)
print(json.dumps({"applied": applied, "faults_per_round": (faults() - before) / 8,
                  "rss_growth_mib": rss_mib() - rss_before}))
"""


def probe(mode: str, env_extra: dict | None = None) -> dict:
    env = {**os.environ, **(env_extra or {})}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=env,
                         timeout=120, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_kept_memory_is_reused_without_page_faults():
    untouched, kept = probe("untouched"), probe("keep")
    pages = (64 << 20) // os.sysconf("SC_PAGESIZE")
    assert kept["applied"] is True
    # glibc's default unmaps a 64 MiB block on free, so each round faults it in again.
    assert untouched["faults_per_round"] > pages / 2
    assert kept["faults_per_round"] < pages / 20
    assert kept["rss_growth_mib"] < 16   # what is kept is reused, not added to


def test_the_baseline_setting_behaves_like_glibcs_default_for_large_blocks():
    settled = probe("settled")
    assert settled["applied"] is True
    assert settled["faults_per_round"] > (64 << 20) // os.sysconf("SC_PAGESIZE") / 2


def test_the_environment_variable_turns_it_off():
    off = probe("keep", {runtime.KEEP_HOST_MEMORY_ENV: "0"})
    assert off["applied"] is False
    assert off["faults_per_round"] > (64 << 20) // os.sysconf("SC_PAGESIZE") / 2
