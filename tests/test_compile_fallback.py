"""torch.compile falls back to eager with one warning when compilation fails (which happens lazily,
at the first call), and the engine's step runs through the guard."""

from __future__ import annotations

import warnings

import pytest
import torch

from resnet_cifar import runtime


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.lin(x)

    def no_sync(self):  # stands in for DDP's method, reached through the wrapper
        return "no_sync of the eager module"


class _FailingCompiled:
    """What torch.compile returns when the backend cannot compile: building it works, calling it fails."""

    def __init__(self, exc=None):
        self.calls = 0
        self.exc = exc or RuntimeError("inductor: no C++ compiler found\nsecond line of the traceback")

    def __call__(self, *args, **kwargs):
        self.calls += 1
        raise self.exc


CPU = torch.device("cpu")


def test_a_compile_that_fails_at_the_first_call_falls_back_to_eager_with_one_warning(monkeypatch):
    fake = _FailingCompiled()
    monkeypatch.setattr(torch, "compile", lambda model, **kw: fake)
    model = _Tiny()
    messages = []
    wrapped = runtime.maybe_compile(model, "on", CPU, warn=messages.append)
    x = torch.randn(5, 4)
    for _ in range(3):
        out = wrapped(x)
        torch.testing.assert_close(out, model(x))
    assert fake.calls == 1, "after the failure the compiled module is never called again"
    assert len(messages) == 1
    assert "torch.compile failed" in messages[0] and "running eager" in messages[0]
    assert "\n" not in messages[0] and "second line" not in messages[0]
    assert not wrapped.compiled_active


def test_the_warning_goes_to_warnings_when_no_logger_is_given(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda model, **kw: _FailingCompiled())
    wrapped = runtime.maybe_compile(_Tiny(), "on", CPU)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wrapped(torch.randn(2, 4))
        wrapped(torch.randn(2, 4))
    assert [str(w.message) for w in caught if "torch.compile failed" in str(w.message)].__len__() == 1


def test_torch_compile_itself_raising_returns_the_eager_module(monkeypatch):
    def boom(model, **kw):
        raise RuntimeError("Windows not yet supported for torch.compile")

    monkeypatch.setattr(torch, "compile", boom)
    model = _Tiny()
    messages = []
    assert runtime.maybe_compile(model, "on", CPU, warn=messages.append) is model
    assert len(messages) == 1


def test_later_non_compiler_errors_are_not_swallowed(monkeypatch):
    """After the compiled module has worked, a user error (wrong shape) is raised, not hidden."""
    class Works:
        def __init__(self, model):
            self.model = model

        def __call__(self, x):
            return self.model(x)

    monkeypatch.setattr(torch, "compile", lambda model, **kw: Works(model))
    messages = []
    wrapped = runtime.maybe_compile(_Tiny(), "on", CPU, warn=messages.append)
    wrapped(torch.randn(2, 4))
    with pytest.raises(RuntimeError):
        wrapped(torch.randn(2, 5))
    assert messages == [] and wrapped.compiled_active


def test_out_of_memory_is_never_a_compile_failure(monkeypatch):
    fake = _FailingCompiled(torch.OutOfMemoryError("CUDA out of memory"))
    monkeypatch.setattr(torch, "compile", lambda model, **kw: fake)
    wrapped = runtime.maybe_compile(_Tiny(), "on", CPU, warn=lambda m: None)
    with pytest.raises(torch.OutOfMemoryError):
        wrapped(torch.randn(2, 4))


def test_the_wrapper_shares_mode_parameters_and_attributes_with_the_eager_module(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda model, **kw: _FailingCompiled())
    model = _Tiny()
    wrapped = runtime.maybe_compile(model, "on", CPU, warn=lambda m: None)
    assert wrapped.no_sync() == "no_sync of the eager module"
    assert [id(p) for p in wrapped.parameters()] == [id(p) for p in model.parameters()]
    wrapped.eval()
    assert not model.training
    wrapped.train()
    assert model.training


@pytest.mark.parametrize("mode,device,compiled", [("auto", "cpu", False), ("off", "cpu", False), ("on", "cpu", True)])
def test_compile_modes(monkeypatch, mode, device, compiled):
    monkeypatch.setattr(torch, "compile", lambda model, **kw: _FailingCompiled())
    model = _Tiny()
    out = runtime.maybe_compile(model, mode, torch.device(device))
    assert (out is not model) == compiled


def test_auto_compiles_on_cuda(monkeypatch):
    seen = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: seen.append(model) or model)
    runtime.maybe_compile(_Tiny(), "auto", torch.device("cuda", 0))
    assert len(seen) == 1


def test_trainer_step_survives_a_failing_compile(monkeypatch, tmp_path, synthetic_images):
    """The real engine step, with --compile on and a backend that fails at the first call."""
    from resnet_cifar.config import resolve
    from resnet_cifar.constants import CIFAR10_MEAN, CIFAR10_STD
    from resnet_cifar.data import Dataset
    from resnet_cifar.engine import Sums, Trainer, train_step

    fake = _FailingCompiled()
    monkeypatch.setattr(torch, "compile", lambda model, **kw: fake)
    x, y = synthetic_images(4, 4)
    data = Dataset("cifar10", torch.from_numpy(x), torch.from_numpy(y), None, None,
                   [f"c{i}" for i in range(4)], CIFAR10_MEAN, CIFAR10_STD)
    cfg = resolve(flag_values=dict(model="resnet20", width=0.25, batch_size=8, epochs=1, val_size=0,
                                   device="cpu", compile="on", swa=False, scheduler="constant"))

    class Log:
        def __init__(self):
            self.lines = []

        def log(self, m):
            self.lines.append(m)

        def __getattr__(self, name):
            return lambda *a, **k: None

    log = Log()
    trainer = Trainer(cfg, data, tmp_path, progress=log)
    sums = Sums.zeros()
    for _b, xb, yb in trainer.train_loader.batches(1):
        out = train_step(trainer.parts.step, xb, yb, len(yb), cfg.lr)
        sums.add(out.sums)
        assert bool(out.finite)
    assert fake.calls == 1
    assert sum("torch.compile failed" in line for line in log.lines) == 1
    assert sums.count.item() == 16


def _compile_and_train_twice(monkeypatch, backend):
    """maybe_compile(_Tiny(), "on") with torch.compile forced onto `backend`, then two forward and
    backward passes; returns (eager model, wrapper, warnings)."""
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real(model, backend=backend))
    torch._dynamo.reset()
    model = _Tiny()
    messages = []
    wrapped = runtime.maybe_compile(model, "on", CPU, warn=messages.append)
    x = torch.randn(6, 4)
    for _ in range(2):
        wrapped(x).square().sum().backward()
    return model, wrapped, messages


def test_a_real_compiled_module_runs_forward_and_backward_through_the_guard(monkeypatch):
    """Real dynamo + AOTAutograd (the aot_eager backend: no C++ toolchain needed, seconds not minutes)."""
    model, wrapped, messages = _compile_and_train_twice(monkeypatch, "aot_eager")
    assert messages == [] and wrapped.compiled_active
    assert model.lin.weight.grad is not None
    torch._dynamo.reset()


def test_a_backward_that_cannot_compile_fails_inside_the_guard(monkeypatch):
    """Backward lowering is lazy by default (it would fail in loss.backward(), outside any guard);
    the guard makes the first call lower it up front, so the fallback catches it."""
    from torch._dynamo.backends.common import aot_autograd

    def bw_fails(gm, example_inputs):
        raise RuntimeError("backward codegen failed")

    backend = aot_autograd(fw_compiler=lambda gm, ex: gm, bw_compiler=bw_fails)
    model, wrapped, messages = _compile_and_train_twice(monkeypatch, backend)
    assert len(messages) == 1 and not wrapped.compiled_active
    assert model.lin.weight.grad is not None
    torch._dynamo.reset()
