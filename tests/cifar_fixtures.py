"""Fake CIFAR-10/100 archives in the real on-disk format, and a loopback HTTP server.

The archives mirror the official ones: a tar.gz holding the official folder name with the batch
files, each a protocol-2 pickle of a dict. `py2_pickle` writes what Python 2's cPickle wrote for
the real files: every string (keys, label names, the array's raw bytes, numpy's dtype state) as a
Python-2 `str` (BINSTRING), and numpy's `_reconstruct` under its old module `numpy.core.multiarray`.
Loaded with encoding="bytes" they come back with bytes keys, like the real files.

Their MD5s differ from the official ones, so each FakeCifar carries a `sources` dict (the layout of
constants.CIFAR_SOURCES with the fixture's own MD5s and URL) to pass to the cifar functions or to
monkeypatch onto resnet_cifar.data.cifar.SOURCES.
"""

from __future__ import annotations

import copy
import hashlib
import http.server
import io
import pickle
import struct
import tarfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from resnet_cifar.constants import CIFAR_SOURCES


class _Py2Pickler(pickle._Pickler):
    """Pure-Python pickler that writes str and bytes the way Python 2 wrote its `str`."""

    def _save_py2_str(self, obj):
        raw = obj.encode("latin-1") if isinstance(obj, str) else bytes(obj)
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch = pickle._Pickler.dispatch.copy()
    dispatch[str] = _save_py2_str
    dispatch[bytes] = _save_py2_str

    def save_global(self, obj, name=None):
        # Module and attribute names are not data: they stay text lines in the GLOBAL opcode.
        module = getattr(obj, "__module__", None)
        name = name or obj.__qualname__
        if module == "numpy._core.multiarray":
            module = "numpy.core.multiarray"       # what numpy 1.x (and the real files) used
        self.write(pickle.GLOBAL + f"{module}\n{name}\n".encode())
        self.memoize(obj)


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def _md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


@dataclass
class FakeCifar:
    name: str
    archive: Path                 # the .tar.gz (in its own folder, not in the data dir)
    sources: dict                 # CIFAR_SOURCES layout with this fixture's MD5s and URL
    files: dict[str, bytes]       # batch/meta file name -> its bytes
    train_x: np.ndarray           # (N, 3, 32, 32) uint8
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list[str]

    @property
    def url(self) -> str:
        return self.archive.resolve().as_uri()


def _batch(rng, n, num_classes, label_key, str_keys, batch_label):
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    # Image 0 is pure red (R plane 255, G and B 0): pins the R(1024) G(1024) B(1024) row layout.
    data[0] = 0
    data[0, :1024] = 255
    labels = [int(v) for v in rng.integers(0, num_classes, size=n)]
    d = {"batch_label": batch_label, label_key: labels, "data": data,
         "filenames": [f"img_{i:04d}.png" for i in range(n)]}
    if label_key == "fine_labels":
        d["coarse_labels"] = [v // 5 for v in labels]
    if not str_keys:
        d = {k.encode(): v for k, v in d.items()}
    return d, data.reshape(n, 3, 32, 32), np.asarray(labels, np.int64)


def make_fake_cifar(out_dir: Path, name: str = "cifar10", *, per_batch: int = 6,
                    n_test: int = 10, str_keys: bool = False, seed: int = 0,
                    corrupt: str | None = None) -> FakeCifar:
    """Write a fake `name` archive under out_dir/<name>-src/ and return what it contains.

    str_keys=True writes Python-3 pickles with str keys instead of Python-2 style ones.
    """
    src = copy.deepcopy(CIFAR_SOURCES[name])
    rng = np.random.default_rng(seed)
    num_classes = 10 if name == "cifar10" else 100
    classes = [f"class_{i:02d}" for i in range(num_classes)]
    dump = (lambda o: pickle.dumps(o, protocol=2)) if str_keys else py2_pickle

    files: dict[str, bytes] = {}
    xs, ys = [], []
    for i, (fname, _) in enumerate(src["train"]):
        d, x, y = _batch(rng, per_batch * (5 if name == "cifar100" else 1), num_classes,
                         src["label_key"], str_keys, f"training batch {i + 1}")
        files[fname] = dump(d)
        xs.append(x)
        ys.append(y)
    d, test_x, test_y = _batch(rng, n_test, num_classes, src["label_key"], str_keys,
                               "testing batch 1 of 1")
    files[src["test"][0][0]] = dump(d)
    meta = {src["names_key"]: classes}
    if name == "cifar10":
        meta.update(num_cases_per_batch=per_batch, num_vis=3072)
    else:
        meta["coarse_label_names"] = [f"super_{i:02d}" for i in range(20)]
    if not str_keys:
        meta = {k.encode(): v for k, v in meta.items()}
    files[src["meta"][0]] = dump(meta)

    src["train"] = [(f, _md5(files[f])) for f, _ in src["train"]]
    src["test"] = [(f, _md5(files[f])) for f, _ in src["test"]]
    src["meta"] = (src["meta"][0], _md5(files[src["meta"][0]]))

    folder = Path(out_dir) / f"{name}-src"
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / src["filename"]
    with tarfile.open(archive, "w:gz") as tar:
        def add(arcname, payload):
            info = tarfile.TarInfo(arcname)
            info.size = len(payload)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(payload))
        for fname, payload in files.items():
            add(f"{src['folder']}/{fname}", payload)
        if name == "cifar10":
            add(f"{src['folder']}/readme.html", b"<html>fake</html>")
    src["archive_md5"] = _md5(archive.read_bytes())
    src["url"] = archive.resolve().as_uri()
    return FakeCifar(name=name, archive=archive, sources={name: src}, files=files,
                     train_x=np.concatenate(xs), train_y=np.concatenate(ys),
                     test_x=test_x, test_y=test_y, classes=classes)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


@contextmanager
def serve_directory(directory: Path):
    """Serve `directory` over HTTP on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    handler = lambda *a, **kw: _QuietHandler(*a, directory=str(directory), **kw)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def closed_port_url() -> str:
    """A loopback URL nobody listens on: connecting is refused at once."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/cifar.tar.gz"
