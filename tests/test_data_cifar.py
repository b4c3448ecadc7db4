"""CIFAR archives: download (file://, loopback HTTP, env mirror), verification, atomic extraction,
reading the real pickle formats, and failing safely and in one line."""

from __future__ import annotations

import io
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from cifar_fixtures import closed_port_url, make_fake_cifar, serve_directory
from resnet_cifar.data import cifar, load_dataset
from resnet_cifar.errors import DataError, UsageError

FOLDER10 = "cifar-10-batches-py"


@pytest.fixture(scope="module")
def fake10(tmp_path_factory):
    return make_fake_cifar(tmp_path_factory.mktemp("src10"), "cifar10")


@pytest.fixture(scope="module")
def fake100(tmp_path_factory):
    return make_fake_cifar(tmp_path_factory.mktemp("src100"), "cifar100", str_keys=True, seed=1)


def _assert_same(ds, fake):
    assert ds.train_x.dtype.is_floating_point is False and ds.train_x.shape[1:] == (3, 32, 32)
    np.testing.assert_array_equal(ds.train_x.numpy(), fake.train_x)
    np.testing.assert_array_equal(ds.train_y.numpy(), fake.train_y)
    np.testing.assert_array_equal(ds.test_x.numpy(), fake.test_x)
    np.testing.assert_array_equal(ds.test_y.numpy(), fake.test_y)
    assert str(ds.train_y.dtype) == "torch.int64"
    assert ds.classes == fake.classes


def _no_leftovers(data_dir: Path):
    return [p.name for p in data_dir.iterdir() if p.name.startswith(".resnet-cifar-tmp-")]


def _one_line(e):
    assert "\n" not in str(e.value)
    return str(e.value)


def test_download_file_url_reads_back_exact_pixels(tmp_path, fake10):
    lines = []
    folder = cifar.download("cifar10", tmp_path, url=fake10.url, log=lines.append,
                            sources=fake10.sources)
    assert folder == tmp_path / FOLDER10
    ds = cifar.read_cifar("cifar10", tmp_path, sources=fake10.sources)
    _assert_same(ds, fake10)
    # Image 0 of each batch is pure red: R/G/B planes land in channels 0/1/2.
    assert (ds.train_x[0, 0] == 255).all() and (ds.train_x[0, 1:] == 0).all()
    assert ds.name == "cifar10" and ds.num_classes == 10
    assert any(fake10.url in line for line in lines)
    assert not _no_leftovers(tmp_path)


def test_download_over_loopback_http_cifar100_str_keys(tmp_path, fake100):
    with serve_directory(fake100.archive.parent) as base:
        url = f"{base}/{fake100.archive.name}"
        cifar.download("cifar100", tmp_path, url=url, sources=fake100.sources)
    ds = cifar.read_cifar("cifar100", tmp_path, sources=fake100.sources)
    _assert_same(ds, fake100)
    assert ds.num_classes == 100


def test_env_var_mirror_is_used(tmp_path, fake10, monkeypatch):
    monkeypatch.setenv("RESNET_CIFAR_CIFAR10_URL", fake10.url)
    lines = []
    cifar.download("cifar10", tmp_path, log=lines.append, sources=fake10.sources)
    assert any(f"downloading {fake10.url}" in line for line in lines)
    assert (tmp_path / FOLDER10 / "data_batch_5").is_file()


def test_url_arg_beats_env_var_and_plain_path_works(fake10, monkeypatch):
    monkeypatch.setenv("RESNET_CIFAR_CIFAR10_URL", "http://mirror.invalid/x.tar.gz")
    assert cifar.resolve_url("cifar10", str(fake10.archive), fake10.sources) == fake10.url
    assert cifar.resolve_url("cifar10", None, fake10.sources) == "http://mirror.invalid/x.tar.gz"
    monkeypatch.delenv("RESNET_CIFAR_CIFAR10_URL")
    assert cifar.resolve_url("cifar10") == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def test_present_folder_or_archive_means_no_network(tmp_path, fake10):
    cifar.download("cifar10", tmp_path, url=fake10.url, sources=fake10.sources)
    dead = closed_port_url()
    lines = []
    # Verified folder present: nothing to do.
    cifar.download("cifar10", tmp_path, url=dead, log=lines.append, sources=fake10.sources)
    assert "already present" in lines[-1]
    # Folder gone but verified archive there: extract from it, no download.
    import shutil
    shutil.rmtree(tmp_path / FOLDER10)
    cifar.download("cifar10", tmp_path, url=dead, log=lines.append, sources=fake10.sources)
    _assert_same(cifar.read_cifar("cifar10", tmp_path, sources=fake10.sources), fake10)


def test_offline_fails_fast_with_manual_instructions(tmp_path, fake10):
    t0 = time.monotonic()
    with pytest.raises(DataError) as e:
        cifar.download("cifar10", tmp_path, url=closed_port_url(), sources=fake10.sources)
    assert time.monotonic() - t0 < 5
    msg = _one_line(e)
    assert "download of cifar10 from http://127.0.0.1:" in msg
    assert str(tmp_path / "cifar-10-python.tar.gz") in msg
    assert "--url" in msg and "RESNET_CIFAR_CIFAR10_URL" in msg
    assert not (tmp_path / FOLDER10).exists() and not _no_leftovers(tmp_path)


def test_http_404_is_a_download_failure(tmp_path, fake10):
    with serve_directory(fake10.archive.parent) as base:
        with pytest.raises(DataError, match="failed"):
            cifar.download("cifar10", tmp_path, url=f"{base}/nope.tar.gz", sources=fake10.sources)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_download_is_refused_and_nothing_extracted(tmp_path, fake10, damage):
    raw = bytearray(fake10.archive.read_bytes())
    if damage == "flip":
        raw[len(raw) // 2] ^= 0xFF
    else:
        raw = raw[: len(raw) // 2]
    bad = tmp_path / "mirror" / "cifar-10-python.tar.gz"
    bad.parent.mkdir()
    bad.write_bytes(bytes(raw))
    data = tmp_path / "data"
    with serve_directory(bad.parent) as base:
        with pytest.raises(DataError) as e:
            cifar.download("cifar10", data, url=f"{base}/{bad.name}", sources=fake10.sources)
    msg = _one_line(e)
    assert "cifar-10-python.tar.gz" in msg and "corrupt or truncated" in msg
    assert sorted(p.name for p in data.iterdir()) == []   # no archive, no folder, no temp


def test_corrupt_archive_already_in_data_dir_is_named(tmp_path, fake10):
    raw = bytearray(fake10.archive.read_bytes())
    raw[100] ^= 1
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(bytes(raw))
    with pytest.raises(DataError) as e:
        cifar.download("cifar10", tmp_path, url=fake10.url, sources=fake10.sources)
    msg = _one_line(e)
    assert str(tmp_path / "cifar-10-python.tar.gz") in msg and "delete it" in msg
    assert not (tmp_path / FOLDER10).exists()


def test_unreadable_archive_with_matching_md5_leaves_nothing(tmp_path, fake10):
    # Even if the MD5 matched (here: injected), a broken tar never yields a final folder.
    raw = fake10.archive.read_bytes()[:-200]
    arc = tmp_path / "src" / "cifar-10-python.tar.gz"
    arc.parent.mkdir()
    arc.write_bytes(raw)
    import hashlib
    sources = {"cifar10": dict(fake10.sources["cifar10"],
                               archive_md5=hashlib.md5(raw).hexdigest())}
    data = tmp_path / "data"
    with pytest.raises(DataError, match="cannot extract"):
        cifar.download("cifar10", data, url=arc.as_uri(), sources=sources)
    assert not (data / FOLDER10).exists() and not _no_leftovers(data)


def test_path_traversal_member_is_refused(tmp_path, fake10):
    arc = tmp_path / "src" / "cifar-10-python.tar.gz"
    arc.parent.mkdir()
    with tarfile.open(arc, "w:gz") as tar:
        info = tarfile.TarInfo("../../evil.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    import hashlib
    sources = {"cifar10": dict(fake10.sources["cifar10"],
                               archive_md5=hashlib.md5(arc.read_bytes()).hexdigest())}
    data = tmp_path / "a" / "b" / "data"
    with pytest.raises(DataError):
        cifar.download("cifar10", data, url=arc.as_uri(), sources=sources)
    assert not list(tmp_path.rglob("evil.txt"))


def test_flipped_byte_in_batch_is_refused_before_unpickling(tmp_path, fake10, monkeypatch):
    cifar.download("cifar10", tmp_path, url=fake10.url, sources=fake10.sources)
    batch = tmp_path / FOLDER10 / "data_batch_3"
    raw = bytearray(batch.read_bytes())
    raw[-50] ^= 0x01
    batch.write_bytes(bytes(raw))

    def no_unpickling(*a, **kw):
        raise AssertionError("unpickled a file whose MD5 did not match")
    monkeypatch.setattr(cifar._NumpyOnlyUnpickler, "load", no_unpickling)
    with pytest.raises(DataError) as e:
        cifar.read_cifar("cifar10", tmp_path, sources=fake10.sources)
    msg = _one_line(e)
    assert str(batch) in msg and "MD5" in msg and "download again" in msg


def test_download_repairs_a_damaged_folder(tmp_path, fake10):
    cifar.download("cifar10", tmp_path, url=fake10.url, sources=fake10.sources)
    (tmp_path / FOLDER10 / "data_batch_2").write_bytes(b"garbage")
    problems = cifar.verify_folder(tmp_path / FOLDER10, fake10.sources["cifar10"])
    assert len(problems) == 1 and "data_batch_2 fails its MD5" in problems[0]
    lines = []
    cifar.download("cifar10", tmp_path, url=closed_port_url(), log=lines.append,
                   sources=fake10.sources)
    assert any("data_batch_2" in line and "rebuilding" in line for line in lines)
    _assert_same(cifar.read_cifar("cifar10", tmp_path, sources=fake10.sources), fake10)
    assert not _no_leftovers(tmp_path)


def test_interrupted_extraction_is_never_taken_as_complete(tmp_path, fake10):
    # A complete-looking leftover temp dir is not the dataset...
    leftover = tmp_path / f".resnet-cifar-tmp-{FOLDER10}-abc123" / FOLDER10
    leftover.mkdir(parents=True)
    for fname, payload in fake10.files.items():
        (leftover / fname).write_bytes(payload)
    with pytest.raises(UsageError, match="resnet-cifar data download --dataset cifar10"):
        cifar.read_cifar("cifar10", tmp_path, sources=fake10.sources)
    # ...and a final folder missing a batch is refused, naming the missing file.
    final = tmp_path / FOLDER10
    final.mkdir()
    for fname, payload in fake10.files.items():
        if fname != "data_batch_4":
            (final / fname).write_bytes(payload)
    with pytest.raises(DataError) as e:
        cifar.read_cifar("cifar10", tmp_path, sources=fake10.sources)
    assert "data_batch_4" in _one_line(e) and "missing" in str(e.value)
    # download cleans the leftover and rebuilds the folder.
    cifar.download("cifar10", tmp_path, url=fake10.url, sources=fake10.sources)
    assert not _no_leftovers(tmp_path)
    _assert_same(cifar.read_cifar("cifar10", tmp_path, sources=fake10.sources), fake10)


def test_only_numpy_globals_are_unpickled(tmp_path, fake10):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    payload = pickle.dumps({b"data": Evil()}, protocol=2)
    import hashlib
    src = dict(fake10.sources["cifar10"])
    src["meta"] = ("batches.meta", hashlib.md5(payload).hexdigest())
    (tmp_path / FOLDER10).mkdir()
    for fname, raw in fake10.files.items():
        (tmp_path / FOLDER10 / fname).write_bytes(raw)
    (tmp_path / FOLDER10 / "batches.meta").write_bytes(payload)
    with pytest.raises(DataError, match="not a CIFAR batch file"):
        cifar.read_cifar("cifar10", tmp_path, sources={"cifar10": src})


def test_production_md5s_are_strict(tmp_path, fake10):
    # Without injected sources, the fake (non-official) files are never unpickled.
    cifar.download("cifar10", tmp_path, url=fake10.url, sources=fake10.sources)
    with pytest.raises(DataError, match="MD5"):
        cifar.read_cifar("cifar10", tmp_path)


def test_read_accepts_the_batch_folder_itself(tmp_path, fake10):
    cifar.download("cifar10", tmp_path, url=fake10.url, sources=fake10.sources)
    ds = cifar.read_cifar("cifar10", tmp_path / FOLDER10, sources=fake10.sources)
    assert len(ds.train_y) == len(fake10.train_y)


def test_load_dataset_wires_download_and_constants(tmp_path, fake10, monkeypatch):
    monkeypatch.setattr(cifar, "SOURCES", fake10.sources)
    with pytest.raises(UsageError) as e:
        load_dataset("cifar10", tmp_path)
    assert "resnet-cifar data download --dataset cifar10 --data-dir" in _one_line(e)
    ds = load_dataset("cifar10", tmp_path, url=fake10.url)
    _assert_same(ds, fake10)
    assert ds.mean == (0.4914, 0.4822, 0.4465) and ds.std == (0.2470, 0.2435, 0.2616)
    ds = load_dataset("cifar10", tmp_path, download=True)   # already there: no network
    assert len(ds.test_y) == len(fake10.test_y)


def test_load_dataset_rejects_unknown_name_and_folder_download(tmp_path):
    with pytest.raises(UsageError) as e:
        load_dataset("mnist", tmp_path)
    assert "cifar10, cifar100, folder" in _one_line(e)
    with pytest.raises(UsageError, match="--download"):
        load_dataset("folder", tmp_path, download=True)
