"""AutoAugment (CIFAR-10 policy), RandAugment and TrivialAugmentWide as per-image plans.

A policy is drawn for a whole epoch at once on the CPU, from a torch.Generator: for every image,
a few slots (op index into `ops.OPS`, float64 magnitude). Applying the plan to a batch is
`apply_policy` on the device. So the choices depend only on (seed, epoch, image position): resume is
exact and CPU/GPU batches are identical, like the crop/flip/cutout plan in loader.py.

The op lists, magnitude bins, probabilities and sign rule are torchvision.transforms.v2's
(`_auto_augment.py`: AutoAugment's CIFAR10 policy with 10 bins, RandAugment's and
TrivialAugmentWide's `_AUGMENTATION_SPACE`), so `--auto-augment` trains on the same distribution as
the torchvision reference scripts. An op that is not applied (AutoAugment's probability) is
Identity in its slot.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UsageError
from .ops import OP_INDEX, OPS, apply_ops

POLICIES = ("autoaugment", "randaugment", "trivialaugment")

# AutoAugment, CIFAR-10 (Cubuk et al. 2019), as torchvision: ((op, probability, magnitude bin), x2).
CIFAR10_POLICY = (
    (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
    (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
    (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
    (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
    (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
    (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
    (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
    (("Color", 0.9, 9), ("Equalize", 0.6, None)),
    (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
    (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
    (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
    (("Equalize", 0.8, None), ("Invert", 0.1, None)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
)

SIGNED = frozenset({"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
                    "Contrast", "Sharpness"})


def _bins(kind: str, num_bins: int, h: int, w: int) -> dict[str, torch.Tensor | None]:
    """torchvision v2's magnitude bins (float32 linspace, as it computes them); None: no magnitude."""
    lin = torch.linspace
    if kind == "trivialaugment":
        wide = lin(0.0, 0.99, num_bins)
        space = {"ShearX": wide, "ShearY": wide, "TranslateX": lin(0.0, 32.0, num_bins),
                 "TranslateY": lin(0.0, 32.0, num_bins), "Rotate": lin(0.0, 135.0, num_bins)}
        space.update({op: wide for op in ("Brightness", "Color", "Contrast", "Sharpness")})
        posterize_span = 6
    else:
        space = {"ShearX": lin(0.0, 0.3, num_bins), "ShearY": lin(0.0, 0.3, num_bins),
                 "TranslateX": lin(0.0, 150.0 / 331.0 * w, num_bins),
                 "TranslateY": lin(0.0, 150.0 / 331.0 * h, num_bins), "Rotate": lin(0.0, 30.0, num_bins)}
        space.update({op: lin(0.0, 0.9, num_bins) for op in ("Brightness", "Color", "Contrast", "Sharpness")})
        posterize_span = 4
    space["Posterize"] = (8 - (torch.arange(num_bins) / ((num_bins - 1) / posterize_span))).round().int()
    space["Solarize"] = lin(1.0, 0.0, num_bins)
    ops = OPS[:14] if kind != "autoaugment" else OPS[1:]  # RA/TA: Identity..Equalize; AA: no Identity
    return {op: space.get(op) for op in ops}


@dataclass(frozen=True)
class Policy:
    kind: str                 # one of POLICIES
    num_ops: int = 2          # RandAugment N
    magnitude: int = 9        # RandAugment M (a bin index)
    num_bins: int = 31        # RandAugment / TrivialAugment

    def __post_init__(self):
        if self.kind not in POLICIES:
            raise UsageError(f"unknown augmentation policy {self.kind!r}; choose one of: {', '.join(POLICIES)}")
        if not 1 <= self.num_ops <= 8:
            raise UsageError(f"RandAugment's number of ops must be in 1..8, got {self.num_ops}")
        if self.num_bins < 2 or not 0 <= self.magnitude < self.num_bins:
            raise UsageError(f"RandAugment's magnitude must be in 0..{self.num_bins - 1}, got {self.magnitude}")

    @property
    def slots(self) -> int:
        return {"autoaugment": 2, "randaugment": self.num_ops, "trivialaugment": 1}[self.kind]

    def describe(self) -> str:
        if self.kind == "autoaugment":
            return "AutoAugment, CIFAR-10 policy (25 sub-policies of 2 ops, 10 magnitude bins)"
        if self.kind == "randaugment":
            return f"RandAugment, N={self.num_ops} ops per image at magnitude {self.magnitude}/{self.num_bins - 1}"
        return f"TrivialAugmentWide, 1 op per image at a random magnitude of {self.num_bins} bins"


@dataclass
class PolicyPlan:
    op: torch.Tensor    # (N, slots) int64 indices into ops.OPS
    mag: torch.Tensor   # (N, slots) float64 magnitudes (signed)

    def to(self, device) -> "PolicyPlan":
        return PolicyPlan(self.op.to(device, non_blocking=True), self.mag.to(device, non_blocking=True))


def _table(bins: dict[str, torch.Tensor | None], width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per policy op: its OPS index, its magnitude bins as float64 (zeros: none), whether signed."""
    names = list(bins)
    index = torch.tensor([OP_INDEX[n] for n in names])
    mags = torch.zeros(len(names), width, dtype=torch.float64)
    for i, n in enumerate(names):
        if bins[n] is not None:
            mags[i] = bins[n].double()  # float(float32 bin), as torchvision's float(magnitudes[i])
    signed = torch.tensor([n in SIGNED for n in names])
    return index, mags, signed


def _sign(signed: torch.Tensor, n: int, k: int, g: torch.Generator) -> torch.Tensor:
    flip = torch.rand(n, k, generator=g) <= 0.5  # v2: `if signed and torch.rand(()) <= 0.5: magnitude *= -1`
    return torch.where(signed & flip, -1.0, 1.0).double()


def plan_policy(n: int, policy: Policy, g: torch.Generator, h: int = 32, w: int = 32) -> PolicyPlan:
    """Draw the ops and magnitudes of `n` images from generator `g`."""
    if policy.kind == "autoaugment":
        bins = _bins("autoaugment", 10, h, w)
        names = list(bins)
        sub_op = torch.tensor([[names.index(op) for op, _, _ in sp] for sp in CIFAR10_POLICY])
        sub_p = torch.tensor([[p for _, p, _ in sp] for sp in CIFAR10_POLICY], dtype=torch.float64)
        sub_bin = torch.tensor([[b if b is not None else 0 for _, _, b in sp] for sp in CIFAR10_POLICY])
        index, mags, signed = _table(bins, 10)
        sub = torch.randint(len(CIFAR10_POLICY), (n,), generator=g)
        applied = torch.rand(n, 2, generator=g).double() <= sub_p[sub]
        k = sub_op[sub]
        mag = mags[k, sub_bin[sub]] * _sign(signed[k], n, 2, g)
        op = torch.where(applied, index[k], OP_INDEX["Identity"])
        return PolicyPlan(op, torch.where(applied, mag, 0.0))
    bins = _bins(policy.kind, policy.num_bins, h, w)
    index, mags, signed = _table(bins, policy.num_bins)
    slots = policy.slots
    k = torch.randint(len(index), (n, slots), generator=g)
    if policy.kind == "randaugment":
        b = torch.full((n, slots), policy.magnitude)
    else:
        b = torch.randint(policy.num_bins, (n, slots), generator=g)
    return PolicyPlan(index[k], mags[k, b] * _sign(signed[k], n, slots, g))


def apply_policy(x: torch.Tensor, op: torch.Tensor, mag: torch.Tensor, op_cpu: torch.Tensor) -> torch.Tensor:
    """Apply the planned slots of a batch in order: op/mag (B, slots) on x's device, op_cpu the
    same op indices on the CPU (which ops occur, known without waiting for the device)."""
    for s in range(op.shape[1]):
        present = {OPS[i] for i in op_cpu[:, s].unique().tolist()} - {"Identity"}
        if present:
            x = apply_ops(x, op[:, s], mag[:, s], present)
    return x
