"""The toolkit inside training: policies, erasing, mixup/cutmix, SAM, clipping, dropout, --init-from.

Resume must stay bitwise (every draw comes from the epoch plan or the per-batch generator), and
the step's SAM and clipping must do what they say."""

from __future__ import annotations

import csv

import pytest
import torch

from helpers import TINY, CrashAfter, tiny_dataset
from resnet_cifar.config import resolve
from resnet_cifar.data.augment import StrongAugment
from resnet_cifar.data.loader import Augment, DeviceLoader
from resnet_cifar.data.policies import Policy
from resnet_cifar.engine import StepSetup, build_parts, fit, load_resume_state, train_step
from resnet_cifar.errors import UsageError
from resnet_cifar.models import build_model


def cfg_for(**kw):
    return resolve(flag_values={**TINY, **kw})


RECIPES = {
    "policy+erase+mix+clip": dict(auto_augment="autoaugment", random_erase=0.5, mixup_alpha=0.4, cutmix_alpha=1.0,
                                  clip_grad_norm=1.0),
    "sam+dropout+trivialaugment": dict(model="wrn16_8", width=0.125, dropout=0.3, optimizer="sam", sam_rho=0.1,
                                       auto_augment="trivialaugment", epochs=2),
}


@pytest.mark.parametrize("name", list(RECIPES))
def test_resume_mid_epoch_is_bitwise_equal_to_an_uninterrupted_run(tmp_path, name):
    data = tiny_dataset()  # 128 training images: 4 steps per epoch
    cfg = cfg_for(deterministic=True, checkpoint_every=2, **RECIPES[name])
    fit(cfg, data, tmp_path / "full")
    with pytest.raises(RuntimeError, match="crash"):
        fit(cfg, data, tmp_path / "cut", progress=CrashAfter(steps=7))  # checkpoint at step 6, mid-epoch 2
    state = load_resume_state(tmp_path / "cut")
    assert (state["epoch"], state["batch"]) == (1, 2)
    fit(cfg, data, tmp_path / "cut", resume_state=state)
    wa = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    rows = [list(csv.DictReader(open(tmp_path / d / "metrics.csv"))) for d in ("full", "cut")]
    keys = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc")
    assert [[r[k] for k in keys] for r in rows[0]] == [[r[k] for k in keys] for r in rows[1]]


def test_the_strong_plan_changes_pixels_but_not_the_order_or_the_crops():
    x = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(40)
    common = dict(batch_size=16, mean=(0.5,) * 3, std=(0.25,) * 3, seed=3, augment=Augment(), channels_last=False)
    plain = list(DeviceLoader(x, y, **common).batches(1))
    strong = list(DeviceLoader(x, y, strong=StrongAugment(Policy("randaugment")), **common).batches(1))
    off = list(DeviceLoader(x, y, strong=StrongAugment(), **common).batches(1))
    assert all(torch.equal(a[2], b[2]) for a, b in zip(plain, strong, strict=True))  # same order
    assert all(torch.equal(a[1], b[1]) for a, b in zip(plain, off, strict=True))     # off = the default path
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(plain, strong, strict=True))
    # two ranks' shares are the global batch (per-image plan, indexed by epoch position)
    shares = [list(DeviceLoader(x, y, strong=StrongAugment(Policy("autoaugment"), 0.5), rank=r, world_size=2,
                                **common).batches(1)) for r in (0, 1)]
    whole = list(DeviceLoader(x, y, strong=StrongAugment(Policy("autoaugment"), 0.5), **common).batches(1))
    for b, (_, xb, _) in enumerate(whole):
        assert torch.equal(torch.cat([shares[0][b][1], shares[1][b][1]]), xb)


def _setup(model, optimizer, clip=0.0):
    import contextlib

    return StepSetup(model=model, optimizer=optimizer, scaler=torch.amp.GradScaler("cpu", enabled=False),
                     amp_ctx=contextlib.nullcontext(), clip_grad_norm=clip)


def test_sam_step_keeps_the_first_pass_bn_statistics_and_moves_the_weights():
    from resnet_cifar.sam import SAM

    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=4, width=0.25).train()
    ref = build_model("resnet20", num_classes=4, width=0.25).train()
    ref.load_state_dict(model.state_dict())
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 4, (8,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = train_step(_setup(model, SAM(model.parameters(), rho=0.05, lr=0.1, momentum=0.9)), x, y, 8, 0.1)
    with torch.no_grad():
        ref(x)  # the first pass's statistics
    for k, v in model.state_dict().items():
        if "running" in k or "num_batches" in k:
            assert torch.equal(v, ref.state_dict()[k]), k
    assert not torch.equal(before["conv1.weight"], model.state_dict()["conv1.weight"])
    assert out.sums.as_dict()["count"] == 8


def test_clipping_bounds_the_update():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 4))
    w0 = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(8, 3, 32, 32) * 50, torch.randint(0, 4, (8,))
    train_step(_setup(model, torch.optim.SGD(model.parameters(), lr=1.0), clip=0.01), x, y, 8, 1.0)
    step = torch.sqrt(sum(((p.detach() - q) ** 2).sum() for p, q in zip(model.parameters(), w0, strict=True)))
    assert 0 < step.item() <= 0.01 + 1e-6


def test_init_from_a_kuangliu_file_starts_from_its_weights(tmp_path):
    src = build_model("resnet20", num_classes=4, width=0.25)
    torch.save({"net": {f"module.{k}": v for k, v in src.state_dict().items()}, "acc": 90.0, "epoch": 3},
               tmp_path / "ckpt.pth")
    parts = build_parts(cfg_for(init_from=str(tmp_path / "ckpt.pth")), tiny_dataset(), torch.device("cpu"))
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in parts.model.state_dict().items())
    # a resume loads its own weights: the --init-from file is not read again (it may be gone)
    moved = build_parts(cfg_for(init_from=str(tmp_path / "gone.pth")), tiny_dataset(), torch.device("cpu"), init=False)
    assert not torch.equal(moved.model.state_dict()["conv1.weight"], src.state_dict()["conv1.weight"])
    torch.save(build_model("resnet32", num_classes=4, width=0.25).state_dict(), tmp_path / "other.pt")
    with pytest.raises(UsageError, match=r"does not fit --model resnet20: 'layer1\.3\.conv1\.weight'"):
        build_parts(cfg_for(init_from=str(tmp_path / "other.pt")), tiny_dataset(), torch.device("cpu"))


@pytest.mark.parametrize("over, needle", [
    (dict(auto_augment="ra"), "unknown auto-augment 'ra'"),
    (dict(random_erase=1.5), "--random-erase must be <= 1"),
    (dict(mixup_alpha=-1.0), "--mixup-alpha must be >= 0"),
    (dict(sam_rho=0.0), "--sam-rho must be > 0"),
    (dict(ra_magnitude=31), "--ra-magnitude must be <= 30"),
])
def test_bad_toolkit_values_are_one_line_usage_errors(over, needle):
    with pytest.raises(UsageError, match=needle.replace("(", r"\(")):
        cfg_for(**over)


def test_dropout_on_a_model_without_it_and_sam_under_fp16_are_refused_before_training(monkeypatch):
    import resnet_cifar.engine.parts as parts

    with pytest.raises(UsageError, match="'resnet20' has no dropout; use one of wrn16_8"):
        build_parts(cfg_for(dropout=0.2), tiny_dataset(), torch.device("cpu"))
    monkeypatch.setattr(parts.runtime, "resolve_amp", lambda amp, device: "fp16")  # as on a GPU without bf16
    with pytest.raises(UsageError, match=r"--optimizer sam cannot run under fp16 \(--amp auto: this GPU has no bf16"):
        build_parts(cfg_for(optimizer="sam"), tiny_dataset(), torch.device("cpu"))
