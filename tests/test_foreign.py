"""Other tools' checkpoints: kuangliu/pytorch-cifar files, xternalz WRN files, plain state_dicts.

The files are written with torch.save, as those tools write them, and read back with
torch.load(weights_only=True)."""

from __future__ import annotations

import pytest
import torch

from resnet_cifar.checkpoint import build_from_checkpoint
from resnet_cifar.errors import CheckpointError, UsageError
from resnet_cifar.foreign import TOOLS, convert
from resnet_cifar.models import build_model


def _roundtrip(obj, tmp_path):
    torch.save(obj, tmp_path / "ckpt.pth")
    return torch.load(tmp_path / "ckpt.pth", weights_only=True)


def _tiny(name, num_classes=10, seed=0):
    torch.manual_seed(seed)
    m = build_model(name, num_classes=num_classes, width=0.125).eval()
    with torch.no_grad():  # non-trivial BN statistics, so a wrong mapping would show in the outputs
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    return m


def test_kuangliu_dataparallel_file_loads_as_resnet18_with_its_normalisation(tmp_path):
    net = _tiny("resnet18")
    obj = {"net": {f"module.{k}": v for k, v in net.state_dict().items()}, "acc": 95.31, "epoch": 199}
    state = convert(_roundtrip(obj, tmp_path), "ckpt.pth")
    assert state["model_args"] == {"name": "resnet18", "num_classes": 10, "width": 0.125}
    assert state["foreign"] == "kuangliu/pytorch-cifar"
    assert state["mean"] == [0.4914, 0.4822, 0.4465] and state["std"] == [0.2023, 0.1994, 0.2010]
    assert state["classes"][0] == "airplane" and len(state["classes"]) == 10
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(build_from_checkpoint(state)(x), net(x))


def test_plain_state_dict_inferred_for_every_family_and_given_statistics(tmp_path):
    for name, classes in (("wrn16_8", 7), ("resnet20", 10), ("preact_resnet18", 3)):
        net = _tiny(name, classes)
        state = convert(_roundtrip(net.state_dict(), tmp_path), "sd.pt", mean="0.5,0.5,0.5".split(","),
                        std=(0.25, 0.25, 0.25))
        assert state["model_args"] == {"name": name, "num_classes": classes, "width": 0.125}
        assert state["mean"] == [0.5] * 3 and state["foreign"] == "state_dict"
        x = torch.randn(2, 3, 32, 32)
        assert torch.equal(build_from_checkpoint(state)(x), net(x))


def test_xternalz_wrn_file_gets_its_normalisation(tmp_path):
    net = _tiny("wrn40_4")
    obj = {"epoch": 200, "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}, "best_prec1": 95.5}
    state = convert(_roundtrip(obj, tmp_path), "checkpoint.pth.tar", model="wrn40_4")
    assert state["foreign"] == "xternalz/WideResNet-pytorch"
    assert state["mean"] == pytest.approx(list(TOOLS["xternalz/WideResNet-pytorch"]["mean"]))
    assert state["std"][0] == pytest.approx(63.0 / 255)


def test_compiled_model_prefix_and_missing_num_batches_tracked_are_accepted(tmp_path):
    net = _tiny("resnet18")
    sd = {f"_orig_mod.{k}": v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    state = convert(_roundtrip(sd, tmp_path), "old.pt", mean=(0, 0, 0), std=(1, 1, 1))
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(build_from_checkpoint(state)(x), net(x))


def test_named_model_mismatch_names_the_first_differing_key(tmp_path):
    sd = _roundtrip(_tiny("resnet18").state_dict(), tmp_path)
    with pytest.raises(UsageError, match=r"does not fit --model resnet34: 'layer1.2.conv1.weight' is missing"):
        convert(sd, "x.pt", model="resnet34", mean=(0, 0, 0), std=(1, 1, 1))
    sd["layer2.0.conv2.weight"] = torch.zeros(16, 15, 3, 3)
    with pytest.raises(UsageError) as e:
        convert(sd, "x.pt", mean=(0, 0, 0), std=(1, 1, 1))
    msg = str(e.value)
    assert "closest resnet18" in msg and "'layer2.0.conv2.weight' has shape (16, 15, 3, 3) in the file, " \
        "the model expects (16, 16, 3, 3)" in msg and "--model" in msg and "\n" not in msg
    sd2 = dict(_tiny("resnet18").state_dict(), extra=torch.zeros(2))
    with pytest.raises(UsageError, match=r"'extra' \(2,\) is in the file but not in the model"):
        convert(sd2, "x.pt", model="resnet18", mean=(0, 0, 0), std=(1, 1, 1))


@pytest.mark.parametrize("obj, match", [
    ({"net": "not a state dict", "acc": 1.0}, "neither a resnet-cifar checkpoint nor a state_dict"),
    ({}, "neither"), ([1, 2, 3], "neither"),
])
def test_not_a_checkpoint(obj, match):
    with pytest.raises(CheckpointError, match=match):
        convert(obj, "x.pt")


def test_plain_state_dict_needs_its_statistics_and_they_are_checked():
    sd = _tiny("resnet20").state_dict()
    with pytest.raises(UsageError, match="normalisation is unknown; pass --mean"):
        convert(sd, "x.pt")
    with pytest.raises(UsageError, match="three numbers"):
        convert(sd, "x.pt", mean=(0.5, 0.5), std=(1, 1, 1))
    with pytest.raises(UsageError, match="must be > 0"):
        convert(sd, "x.pt", mean=(0.5,) * 3, std=(1, 0, 1))
    with pytest.raises(UsageError, match="unknown model"):
        convert(sd, "x.pt", model="resnet19", mean=(0.5,) * 3, std=(1,) * 3)
