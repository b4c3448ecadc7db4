"""Every `train` flag and config value is checked before any work starts (issue "Reliability and
security", case 12): bad input is exit 2 with one `resnet-cifar: error:` line, no traceback, and
nothing written. A bounded property-based test throws random argv and config files at
`resnet_cifar.cli.main` and checks the same contract.

No training ever starts here: data loading is replaced by a tiny in-memory dataset and
`engine.fit` by a stub that raises `_Reached`, which marks an argv that passed validation.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from reliability_helpers import assert_one_line_error, run_main, tiny_dataset, write_folder
from resnet_cifar.config import FIELD_NAMES


class _Reached(Exception):
    """fit() was called: validation passed."""

    def __init__(self, run_dir):
        super().__init__(str(run_dir))
        self.run_dir = Path(run_dir)


def _snapshot(root: Path, skip: Path | None = None) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        if skip is not None and (d == skip or skip in d.parents):
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            p = d / name
            if skip is not None and p == skip:
                continue
            st_ = p.lstat()
            out[str(p.relative_to(root))] = (st_.st_size, st_.st_mtime_ns, p.is_dir())
    return out


@pytest.fixture
def no_training(monkeypatch):
    """Validation runs for real; data loading and training are stubs."""
    import resnet_cifar.data
    import resnet_cifar.engine

    def fit(cfg, data, run_dir, **kw):
        raise _Reached(run_dir)

    monkeypatch.setattr(resnet_cifar.engine, "fit", fit)
    monkeypatch.setattr(resnet_cifar.data, "load_dataset", lambda *a, **k: tiny_dataset())
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


# --------------------------------------------------------------------------- targeted cases
BAD_ARGV = [
    (["--lr", "nan"], "--lr must be a finite number"),
    (["--lr", "inf"], "--lr must be a finite number"),
    (["--lr", "-0.1"], "--lr must be >= 0"),
    (["--lr", "0"], "--lr must be > 0"),
    (["--lr", "fast"], "invalid float value"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--batch-size", "-8"], "--batch-size must be >= 1"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--batch-size", "8", "--accum-steps", "3"], "not divisible"),
    (["--model", "resnet9"], "choose one of: resnet18, resnet34"),
    (["--model", "resnet9"], "resnet20"),
    (["--dataset", "imagenet"], "choose from 'cifar10', 'cifar100', 'folder'"),
    (["--optimizer", "lamb"], "invalid choice"),
    (["--lr-rate", "0.1"], "unrecognized arguments: --lr-rate"),
    (["--momentum", "1.5"], "--momentum must be < 1"),
    (["--weight-decay", "-1"], "--weight-decay must be >= 0"),
    (["--seed", "-1"], "--seed must be >= 0"),
    (["--seed", str(2**70)], "--seed must be below 2**63"),
    (["--val-size", "-5"], "--val-size must be >= 0"),
    (["--width", "0"], "--width must be > 0"),
    (["--width", "1e9"], "--width must be <= 64"),
    (["--ema", "1"], "--ema is a decay"),
    (["--seeds", "1,x"], "--seeds must be comma-separated"),
    (["--seeds", "1,1"], "--seeds must list distinct"),
    (["--device", "tpu"], "invalid choice"),
    (["--device", "cuda"], "CUDA is not available"),
]


@pytest.mark.parametrize("extra, needle", BAD_ARGV, ids=[" ".join(a) for a, _ in BAD_ARGV])
def test_bad_flags_exit_2_with_one_line_and_write_nothing(tmp_path, monkeypatch, capsys, no_training, extra, needle):
    if extra == ["--device", "cuda"]:
        monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.chdir(tmp_path)
    before = _snapshot(tmp_path)
    code, _, err = run_main(["train", "--dataset", "folder", "--data-dir", "missing", "--out", "run", *extra], capsys)
    assert code == 2, err
    assert_one_line_error(err, needle)
    assert _snapshot(tmp_path) == before


BAD_FILES = [
    ("cfg.yaml", "lr_rate: 0.1\n", "unknown config file key 'lr_rate'"),
    ("cfg.yaml", "weight_decy: 0.1\n", "unknown config file key 'weight_decy' (did you mean 'weight_decay'?)"),
    ("cfg.yaml", "lr: .nan\n", "--lr must be a finite number"),
    ("cfg.json", '{"lr": NaN}', "--lr must be a finite number"),
    ("cfg.json", '{"batch_size": 0}', "--batch-size must be >= 1"),
    ("cfg.json", '{"batch_size": 2.5}', "batch_size=2.5 must be int"),
    ("cfg.yaml", "model: resnet9\n", "choose one of"),
    ("cfg.yaml", "dataset: imagenet\n", "choose one of: cifar10, cifar100, folder"),
    ("cfg.yaml", "lr: [0.1]\n", "must be float"),
    ("cfg.yaml", "milestones: [0.5, 2]\n", "milestones"),
    ("cfg.yaml", "- a\n- b\n", "must hold a mapping"),
    ("cfg.yaml", "lr: [unclosed\n", "does not parse"),
    ("cfg.json", "{", "does not parse"),
    ("cfg.yaml", "preset: turbo\n", "unknown preset"),
]


@pytest.mark.parametrize("name, text, needle", BAD_FILES, ids=[t for _, t, _ in BAD_FILES])
def test_bad_config_files_exit_2_with_one_line(tmp_path, monkeypatch, capsys, no_training, name, text, needle):
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_text(text)
    before = _snapshot(tmp_path)
    code, _, err = run_main(["train", "--config", name, "--out", "run"], capsys)
    assert code == 2, err
    assert_one_line_error(err, needle)
    assert _snapshot(tmp_path) == before


def test_large_integers_are_kept_exactly():
    from resnet_cifar.config import resolve

    assert resolve(flag_values={"seed": 2**63 - 1}).seed == 2**63 - 1
    assert resolve(file_values={"seed": "12345678901234567"}).seed == 12345678901234567
    assert resolve(file_values={"epochs": 3.0, "batch_size": "1e3"}).batch_size == 1000


def test_missing_config_file(tmp_path, capsys, no_training):
    code, _, err = run_main(["train", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "r")], capsys)
    assert code == 2
    assert_one_line_error(err, "nope.yaml", "not found")


def test_out_that_exists_and_is_not_empty(tmp_path, capsys, no_training):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = _snapshot(tmp_path)
    code, _, err = run_main(["train", "--out", str(out)], capsys)
    assert code == 2
    assert_one_line_error(err, "exists and is not empty", "--overwrite")
    # --overwrite does not delete a directory that is not a run directory
    code, _, err = run_main(["train", "--out", str(out), "--overwrite"], capsys)
    assert code == 2
    assert_one_line_error(err, "not a resnet-cifar run directory")
    (tmp_path / "afile").write_text("x")
    before = _snapshot(tmp_path)
    code, _, err = run_main(["train", "--out", str(tmp_path / "afile")], capsys)
    assert code == 2
    assert_one_line_error(err, "is a file")
    assert _snapshot(tmp_path) == before


def test_missing_data_is_exit_2_before_anything_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    import resnet_cifar.engine

    monkeypatch.setattr(resnet_cifar.engine, "fit", lambda *a, **k: pytest.fail("training started"))
    nowhere = str(tmp_path / "nowhere")
    before = _snapshot(tmp_path)
    for argv, needle in ((["--dataset", "folder", "--data-dir", nowhere], nowhere),
                         (["--dataset", "cifar10", "--data-dir", nowhere, "--no-download"], nowhere),
                         (["--dataset", "cifar100", "--data-dir", str(tmp_path), "--no-download"], "not found")):
        code, _, err = run_main(["train", *argv, "--out", str(tmp_path / "run")], capsys)
        assert code == 2, (argv, err)
        assert_one_line_error(err, needle)
    assert _snapshot(tmp_path) == before
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    before = _snapshot(tmp_path)
    code, _, err = run_main(["train", "--dataset", "folder", "--data-dir", str(empty), "--out", str(tmp_path / "run")],
                            capsys)
    assert code == 2
    assert_one_line_error(err, "class folders")
    assert _snapshot(tmp_path) == before


def test_resume_validation(tmp_path, capsys, no_training):
    run = tmp_path / "run"
    code, _, err = run_main(["train", "--resume", str(run)], capsys)
    assert code == 2
    assert_one_line_error(err, "no checkpoints/last.pt")
    code, _, err = run_main(["train", "--resume", str(run), "--lr", "0.1"], capsys)
    assert code == 2
    assert_one_line_error(err, "drop lr")


def test_a_valid_argv_reaches_training(tmp_path, capsys, no_training):
    data = write_folder(tmp_path / "data", n_per_class=1)
    with pytest.raises(_Reached):
        run_main(["train", "--dataset", "folder", "--data-dir", str(data), "--out", str(tmp_path / "run"),
                  "--model", "resnet20", "--epochs", "1", "--val-size", "2"], capsys)  # the stub data: 12 images


# --------------------------------------------------------------------------- property-based
def _train_flags():
    from resnet_cifar.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    train = sub.choices["train"]
    flags = {}
    for action in train._actions:
        for opt in action.option_strings:
            if opt.startswith("--") and opt not in ("--help",):
                flags[opt] = action
    return flags


FLAGS = _train_flags()
CHOICES = sorted({str(c) for a in FLAGS.values() if a.choices for c in a.choices})
NUMBERS = st.one_of(
    st.integers(-3, 300).map(str),
    st.sampled_from(["0", "-1", "1e400", "-1e400", "nan", "inf", "-inf", "1e-30", str(2**63), str(2**64), "0.5",
                     "1.0", "3", "4", "8", "0x10", "1_000", " 7", "", "1,2", "0,1,2"]),
    st.floats(allow_nan=True, allow_infinity=True, width=32).map(repr),
)
JUNK = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
PATHS = st.sampled_from(["out", "out_full", "out_file", "run_dir", "missing/deeper", ".", "..", "", "cfg.yaml"])
TOKEN = st.one_of(
    st.sampled_from(sorted(FLAGS)),
    st.sampled_from(sorted(FLAGS)).map(lambda f: f + "="),
    NUMBERS, st.sampled_from(CHOICES), PATHS, JUNK, st.sampled_from(["--", "-", "--lr-rate", "-h", "--no-lr"]),
)


def _pair(flag):
    action = FLAGS[flag]
    if action.nargs == 0:
        return st.just([flag])
    if flag in ("--out", "--resume", "--data-dir", "--config"):
        return PATHS.map(lambda v: [flag, v])
    if action.choices:
        return st.one_of(st.sampled_from([str(c) for c in action.choices]), JUNK).map(lambda v: [flag, v])
    return st.one_of(NUMBERS, JUNK).map(lambda v: [flag, v])


PAIRS = st.sampled_from(sorted(FLAGS)).flatmap(_pair)
ARGV = st.lists(st.one_of(PAIRS, PAIRS, PAIRS, TOKEN.map(lambda t: [t])), max_size=10).map(
    lambda parts: [t for p in parts for t in p])

VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
              JUNK, st.sampled_from(CHOICES), PATHS),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(JUNK, inner, max_size=2)),
    max_leaves=4)
KEYS = st.one_of(st.sampled_from(FIELD_NAMES), st.sampled_from(FIELD_NAMES).map(lambda k: k.replace("_", "-")), JUNK)
CONFIG = st.one_of(
    st.none(),
    st.tuples(st.sampled_from(["json", "yaml"]), st.dictionaries(KEYS, VALUES, max_size=6)),
    st.tuples(st.just("raw"), st.text(max_size=40)),
)


def _write_config(root: Path, config) -> Path | None:
    if config is None:
        return None
    kind, body = config
    if kind == "json":
        path, text = root / "cfg.json", json.dumps(body)
    elif kind == "yaml":
        path, text = root / "cfg.yaml", yaml.safe_dump(body, allow_unicode=True)
    else:
        path, text = root / "cfg.yaml", body
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return path


def _arena(root: Path) -> None:
    """The places the random paths point at."""
    (root / "out_full").mkdir()
    (root / "out_full" / "keep.txt").write_text("not a run")
    (root / "out_file").write_text("a file")
    (root / "run_dir").mkdir()
    (root / "run_dir" / "config.yaml").write_text("model: resnet20\n")  # a run directory: --overwrite may replace it
    write_folder(root / "data", n_per_class=1)


@settings(max_examples=int(os.environ.get("RESNET_CIFAR_FUZZ_EXAMPLES", "60")), deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(argv=ARGV, config=CONFIG, use_config=st.booleans())
def test_random_argv_and_config_files_are_validated_without_tracebacks(argv, config, use_config, no_training, capsys):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _arena(root)
        cfg_file = _write_config(root, config)
        if use_config and cfg_file is not None:
            argv = ["--config", str(cfg_file.name), *argv]
        cwd = os.getcwd()
        os.chdir(root)
        before = _snapshot(root)
        reached = None
        try:
            code, _out, err = run_main(["train", *argv], capsys)
        except _Reached as r:
            reached = r.run_dir
            code, _out, err = 0, *capsys.readouterr()
        finally:
            os.chdir(cwd)
        event("passed validation" if reached is not None else f"exit {code}")
        assert code in (0, 2), (argv, config, err)
        assert "Traceback" not in err, (argv, config, err)
        if code == 2:
            assert err.endswith("\n") and err.count("\n") == 1 and "error:" in err, (argv, config, err)
        # Nothing written or deleted anywhere, except an --overwrite'n run directory (--out itself).
        out_dir = None
        if reached is not None:
            out_dir = (root / reached).resolve()
            if out_dir.name.startswith("seed-"):
                out_dir = out_dir.parent
        after = _snapshot(root, skip=out_dir)
        before_kept = {k: v for k, v in before.items()
                       if out_dir is None or not (root / k).resolve().is_relative_to(out_dir)}
        assert after == before_kept, (argv, config)
