import pytest
import torch

from resnet_cifar.errors import UsageError
from resnet_cifar.models import build_model, count_parameters, list_models

# The reference CIFAR definitions (kuangliu/pytorch-cifar; He et al. 2016 option-A shortcuts).
EXPECTED_PARAMS = {
    "resnet18": 11_173_962, "resnet34": 21_282_122, "resnet50": 23_520_842,
    "resnet101": 42_512_970, "resnet152": 58_156_618,
    # kuangliu's PreActResNet18 has 11,171,146: it omits the final BN-ReLU of the pre-activation
    # paper; ours keeps it (+2 x 512).
    "preact_resnet18": 11_172_170,
    "resnet20": 269_722, "resnet32": 464_154, "resnet44": 658_586, "resnet56": 853_018,
    "resnet110": 1_727_962,
    # The reference WRNs (Zagoruyko & Komodakis 2016; xternalz/WideResNet-pytorch, same key names).
    "wrn16_8": 10_961_370, "wrn28_10": 36_479_194, "wrn40_4": 8_949_210,
    # airbench94's layers (1,972,792 with its frozen whitening weights and BN scales; 1,971,352 trainable)
    "speedrun_resnet": 1_972_792,
    # + airbench96's third conv in each group: 64*64*9 + 2 * 256*256*9 weights and 576 BN biases + 576 scales
    "speedrun_resnet_deep": 3_190_456,
}


def test_registry_lists_every_model():
    assert set(list_models()) == set(EXPECTED_PARAMS)


@pytest.mark.parametrize("name", list_models())
def test_parameter_count(name):
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = build_model(name)
    assert count_parameters(model) == EXPECTED_PARAMS[name]


@pytest.mark.parametrize("name", list_models())
def test_forward_shape_finite_and_gradients_reach_every_parameter(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, width=0.125)
    x = torch.randn(3, 3, 32, 32)
    out = model(x)
    assert out.shape == (3, 7)
    assert torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    # frozen parameters (speedrun_resnet's whitening weights and BN scales) are meant to get none
    missing = [n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not missing, missing
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_resnet20_is_the_small_cifar_resnet():
    with torch.device("meta"):
        assert 0.26e6 < count_parameters(build_model("resnet20")) < 0.28e6


def test_num_classes_changes_only_the_head():
    with torch.device("meta"):
        a, b = build_model("resnet18", 10), build_model("resnet18", 100)
    assert count_parameters(b) - count_parameters(a) == 90 * 512 + 90


def test_zero_init_residual_zeroes_last_bn_of_each_block():
    m = build_model("resnet18", zero_init_residual=True, width=0.125)
    assert all((blk.bn2.weight == 0).all() for layer in (m.layer1, m.layer2, m.layer3, m.layer4) for blk in layer)
    assert (m.bn1.weight == 1).all()


def test_unknown_model_lists_valid_names():
    with pytest.raises(UsageError, match="resnet18"):
        build_model("resnet19")


def test_wide_dropout_is_active_in_training_only():
    torch.manual_seed(0)
    m = build_model("wrn16_8", width=0.125, dropout=0.5)
    x = torch.randn(4, 3, 32, 32)
    m.train()
    assert not torch.equal(m(x), m(x))  # dropout draws differ
    m.eval()
    assert torch.equal(m(x), m(x))


def test_dropout_keeps_the_state_dict_and_is_refused_where_absent():
    with torch.device("meta"):
        plain, dropped = build_model("wrn40_4"), build_model("wrn40_4", dropout=0.3)
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in dropped.state_dict().items()}
    with pytest.raises(UsageError, match="no dropout"):
        build_model("resnet18", dropout=0.1)
    with pytest.raises(UsageError, match="dropout must be in"):
        build_model("wrn16_8", dropout=1.0)


def test_wide_projection_only_where_the_shape_changes():
    m = build_model("wrn16_8", width=0.125)
    projected = [n for n, mod in m.named_modules() if getattr(mod, "convShortcut", "x") is not None
                 and hasattr(mod, "convShortcut")]
    # the first block of each of the three groups changes channels (16->128) or stride
    assert projected == ["block1.layer.0", "block2.layer.0", "block3.layer.0"]
