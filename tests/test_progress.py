import io

import torch

from helpers import TINY, tiny_dataset
from resnet_cifar.config import resolve
from resnet_cifar.engine import fit
from resnet_cifar.progress import Console


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_non_tty_log_has_one_line_per_epoch_and_no_bar_noise(tmp_path):
    stream = io.StringIO()
    fit(resolve(flag_values={**TINY, "epochs": 2}), tiny_dataset(), tmp_path / "run", progress=Console(stream))
    text = stream.getvalue()
    assert "\r" not in text and "\x1b[" not in text
    epoch_lines = [line for line in text.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 2 and "img/s" in epoch_lines[0] and "val loss" in epoch_lines[0]
    assert "estimated total time for 2 epochs" in text


def test_tty_shows_a_live_bar_with_loss_accuracy_and_rate():
    stream = FakeTTY()
    c = Console(stream, bar=True, refresh=0.0)
    c.epoch_start(1, 3, steps=4)
    sums = torch.tensor([2.0, 3.0, 4.0], dtype=torch.float64)
    for _ in range(4):
        c.step(4, sums)
    c.estimate(3725, 3)
    c.step(4, sums)
    text = stream.getvalue()
    assert "epoch 1/3" in text and "loss 0.500" in text and "acc 0.750" in text and "img/s" in text
    assert "est. total 1h02m" in c.bar.postfix and "estimated total time for 3 epochs: 1h02m" in text
    c.close()


def test_epoch_summaries_go_to_stdout_and_notes_to_stderr(tmp_path, capsys):
    """`train > train.log` keeps the history: the epoch lines are on stdout, the estimate on stderr."""
    fit(resolve(flag_values={**TINY, "epochs": 1}), tiny_dataset(), tmp_path / "run", progress=Console(bar=False))
    cap = capsys.readouterr()
    assert [ln for ln in cap.out.splitlines() if ln.startswith("epoch 1: lr")] == cap.out.splitlines()
    assert "estimated total time for 1 epoch:" in cap.err and "epoch 1: lr" not in cap.err


def test_a_record_line_under_a_live_bar_leaves_the_bar_on_stderr():
    err, out = FakeTTY(), io.StringIO()
    c = Console(err, bar=True, out=out)
    c.epoch_start(1, 1, steps=2)
    c.record("header line")
    assert out.getvalue() == "header line\n" and "header line" not in err.getvalue()
    c.close()
