"""Loading, validation and normalisation of CIFAR-10 batches, and the download path."""

import hashlib
import http.server
import io
import os
import pickle
import tarfile
import threading

import numpy as np
import pytest
from conftest import FILES, write_batch

import assignment2 as a


def test_loader_reads_official_layout(tiny_cifar):
    folder, content = tiny_cifar
    s = a.load_batch(folder / "data_batch_1")
    data, labels = content["data_batch_1"]
    assert s.X.shape == (3072, 40) and s.X.dtype == np.uint8
    assert s.X.flags.f_contiguous  # one image per contiguous column
    np.testing.assert_array_equal(s.X[:, 3], data[3])
    np.testing.assert_array_equal(s.y, labels)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_loader_accepts_every_pickle_protocol(tmp_path, protocol):
    data = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    write_batch(tmp_path / "b", data, [1, 9], protocol=protocol)
    np.testing.assert_array_equal(a.load_batch(tmp_path / "b").X.T, data)


def test_load_batches_concatenates_in_order(tiny_cifar):
    folder, content = tiny_cifar
    s = a.concat([a.load_batch(folder / f) for f in ["data_batch_2", "data_batch_3"]])
    assert s.X.shape == (3072, 80) and s.X.flags.f_contiguous
    np.testing.assert_array_equal(s.X[:, 40], content["data_batch_3"][0][0])
    np.testing.assert_array_equal(s.y[:40], content["data_batch_2"][1])


class Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_refuses_a_pickle_that_would_run_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "data_batch_1", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": [0]}, f)
    with pytest.raises(
        a.DataError, match=r"data_batch_1.*refused the global (posix|os)\.system"
    ):
        a.load_batch(tmp_path / "data_batch_1")
    assert not (tmp_path / "pwned").exists()


def _bad(tmp_path, kind):
    path = tmp_path / "data_batch_1"
    good = np.zeros((4, 3072), np.uint8)
    if kind == "truncated":
        write_batch(path, good, [0, 1, 2, 3])
        path.write_bytes(path.read_bytes()[:5000])
    elif kind == "garbage":
        path.write_bytes(b"this is not a pickle at all")
    elif kind == "shape":
        write_batch(path, np.zeros((4, 100), np.uint8), [0, 1, 2, 3])
    elif kind == "dtype":
        write_batch(path, good.astype(np.float64), [0, 1, 2, 3])
    elif kind == "labels":
        write_batch(path, good, [0, 1, 10, 3])
    elif kind == "count":
        write_batch(path, good, [0, 1])
    elif kind == "not a dict":
        with open(path, "wb") as f:
            pickle.dump([1, 2, 3], f)
    return path


@pytest.mark.parametrize(
    "kind,message",
    [
        ("truncated", "corrupt or unsafe.*pickle data was truncated"),
        ("garbage", "data_batch_1"),
        ("shape", r"array \(n, 3072\)"),
        ("dtype", "uint8"),
        ("labels", "labels outside 0..9"),
        ("count", "flat list of 4 integers"),
        ("not a dict", "expected a dict"),
    ],
)
def test_bad_batches_raise_a_clear_error(tmp_path, kind, message):
    path = _bad(tmp_path, kind)
    with pytest.raises(a.DataError, match=message) as e:
        a.load_batch(path)
    assert str(path) in str(e.value)


def test_normalise_uses_training_statistics_only():
    rng = np.random.default_rng(0)
    train = a.Split(
        np.asfortranarray(rng.integers(0, 256, (6, 50), dtype=np.uint8)), rng.integers(0, 10, 50)
    )
    val = a.Split(
        np.asfortranarray(rng.integers(100, 256, (6, 20), dtype=np.uint8)), rng.integers(0, 10, 20)
    )
    tr, va = a.normalise(train, val, dtype="float64")
    np.testing.assert_allclose(tr.X.mean(axis=1), 0, atol=1e-12)
    np.testing.assert_allclose(tr.X.std(axis=1), 1, atol=1e-12)
    mean, std = train.X.mean(axis=1, keepdims=True), train.X.std(axis=1, keepdims=True)
    # the validation split's own mean is not used
    np.testing.assert_allclose(va.X, (val.X - mean) / std)
    assert va.X.flags.f_contiguous
    assert a.normalise(train, dtype="float32")[0].X.dtype == np.float32


def test_split_last_holds_out_the_tail():
    s = a.Split(np.asfortranarray(np.arange(30).reshape(3, 10)), np.arange(10))
    tr, va = a.split_last(s, 4)
    assert tr.n == 6 and va.n == 4 and list(va.y) == [6, 7, 8, 9]
    with pytest.raises(a.ConfigError):
        a.split_last(s, 10)


def _archive(tmp_path, extra=(), n=2):
    """A tar.gz laid out like the official one (n random images a batch), plus extra
    (name, bytes) members."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in FILES + ("batches.meta",):
            src = tmp_path / "src" / name
            src.parent.mkdir(exist_ok=True)
            pixels = np.random.default_rng(0).integers(0, 256, (n, 3072), dtype=np.uint8)
            write_batch(src, pixels, np.arange(n) % 10)
            tar.add(src, arcname=f"cifar-10-batches-py/{name}")
        for name, payload in extra:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    path = tmp_path / "cifar.tar.gz"
    path.write_bytes(buf.getvalue())
    return path.as_uri(), hashlib.md5(buf.getvalue()).hexdigest()


def test_download_verifies_and_extracts_only_the_batches(tmp_path):
    url, md5 = _archive(
        tmp_path, extra=[("../escape.txt", b"x"), ("cifar-10-batches-py/evil.sh", b"rm -rf /")]
    )
    dest = tmp_path / "data" / "cifar-10-batches-py"
    assert a.ensure_data(dest, may_download=True, url=url, md5=md5) == dest
    assert sorted(p.name for p in dest.iterdir()) == sorted(FILES)
    assert (
        not (tmp_path / "escape.txt").exists() and not (tmp_path / "data" / "escape.txt").exists()
    )
    assert a.load_batch(dest / "test_batch").n == 2


def test_download_with_a_wrong_md5_is_refused(tmp_path):
    url, _ = _archive(tmp_path)
    dest = tmp_path / "data" / "cifar-10-batches-py"
    with pytest.raises(a.DataError, match="MD5"):
        a.ensure_data(dest, may_download=True, url=url, md5="0" * 32)
    assert os.listdir(tmp_path / "data") == []  # neither the folder nor a temporary one


@pytest.fixture
def http_archive(tmp_path):
    """A loopback HTTP server for the archive of _archive: (url, md5, cut) where cut(k) makes
    it send only the first k bytes while announcing them all."""
    url, md5 = _archive(tmp_path, n=20)  # about 370 kB
    blob, cut = (tmp_path / "cifar.tar.gz").read_bytes(), {"k": None}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(blob)))
            self.end_headers()
            self.wfile.write(blob[:cut["k"]])

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/cifar.tar.gz", md5, cut
    server.shutdown()
    server.server_close()


def test_download_streams_with_progress(http_archive, tmp_path, capsys):
    url, md5, _ = http_archive
    dest = tmp_path / "data" / "cifar-10-batches-py"
    a.download(dest, url, md5, chunk=1024)
    assert sorted(p.name for p in dest.iterdir()) == sorted(FILES)
    assert os.listdir(tmp_path / "data") == ["cifar-10-batches-py"]
    lines = capsys.readouterr().err.splitlines()  # not a terminal: a line per 10%
    assert "downloading" in lines[0] and lines[-1].endswith("(100%)")
    assert 5 <= len(lines) - 1 <= 11 and len(set(lines)) == len(lines)


def test_a_cut_download_leaves_nothing(http_archive, tmp_path):
    url, md5, cut = http_archive
    cut["k"] = 100_000
    dest = tmp_path / "data" / "cifar-10-batches-py"
    with pytest.raises(a.DataError, match="by hand"):
        a.download(dest, url, md5, chunk=1024)
    assert os.listdir(tmp_path / "data") == []


def test_progress_redraws_one_line_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True
    out = Terminal()
    show = a.progress_line(2_000_000, out)
    for done in (500_000, 1_000_000, 2_000_000):
        show(done)
    show(2_000_000, end=True)
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("2.0 MB of 2.0 MB (100%)\n")
    assert text.count("\r") == 4 and "0.5 MB of 2.0 MB (25%)" in text


def test_offline_download_says_what_to_do(tmp_path):
    dest = tmp_path / "cifar-10-batches-py"
    with pytest.raises(a.DataError, match="by hand"):
        a.ensure_data(dest, may_download=True, url=(tmp_path / "nothing.tar.gz").as_uri())


def test_a_given_folder_is_never_downloaded_into(tmp_path, tiny_cifar):
    with pytest.raises(a.DataError, match="data folder not found"):
        a.ensure_data(tmp_path / "nope", may_download=False)
    folder, _ = tiny_cifar
    (folder / "test_batch").unlink()
    with pytest.raises(a.DataError, match="missing test_batch"):
        a.ensure_data(folder, may_download=False)


def test_shared_cifar_batches_load(shared_data):
    s = a.load_batch(shared_data / "data_batch_1")
    assert s.X.shape == (3072, 10000) and s.X.dtype == np.uint8
    assert set(np.unique(s.y)) == set(range(10))


@pytest.mark.parametrize(
    "labels,message",
    [
        ([[0, 1], [2]], "flat list of 2 integers"),  # ragged
        ([[[[0]]]], "flat list of 2 integers"),  # nested
        ([0, 1.0], "flat list of 2 integers"),  # not integers
        ([0, 10**30], "labels outside 0..9"),  # too large for int64
        (np.zeros((2, 1), np.int64), "flat list of 2 integers"),  # a 2-D array
        ("ab", "flat list of 2 integers"),
    ],
)
def test_labels_of_the_wrong_structure_are_a_data_error(tmp_path, labels, message):
    path = tmp_path / "data_batch_1"
    with open(path, "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": labels}, f, protocol=2)
    with pytest.raises(a.DataError, match=message):
        a.load_batch(path)


def test_self_referencing_labels_are_refused_without_expanding_them(tmp_path):
    """A 'billion laughs' pickle: labels is a list of 30 references to a list of 30 references to
    ... 8 deep, 30**8 = 6.6e11 ints if expanded. Refused from its first element, at once."""
    inner = [0] * 30
    for _ in range(7):
        inner = [inner] * 30
    path = tmp_path / "data_batch_1"
    with open(path, "wb") as f:
        pickle.dump({b"data": np.zeros((30, 3072), np.uint8), b"labels": inner}, f, protocol=2)
    assert path.stat().st_size < 100_000
    with pytest.raises(a.DataError, match="flat list of 30 integers"):
        a.load_batch(path)


def test_a_file_too_large_for_a_batch_is_refused_before_unpickling(tmp_path, monkeypatch):
    path = tmp_path / "data_batch_1"
    write_batch(path, np.zeros((4, 3072), np.uint8), [0, 1, 2, 3])
    monkeypatch.setattr(a, "MAX_BATCH_BYTES", 1000)
    with pytest.raises(a.DataError, match="too large for a CIFAR-10 batch"):
        a.load_batch(path)


def test_empty_bytes_at_protocol_2_are_accepted_and_bytes_with_a_size_refused(tmp_path):
    path = tmp_path / "data_batch_1"
    batch = {
        b"data": np.zeros((1, 3072), np.uint8),
        b"labels": [3],
        b"batch_label": b"",
        b"filenames": [b""],
    }
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)
    assert a.load_batch(path).y.tolist() == [3]

    class Huge:  # pickles as builtins.bytes(10**12): a terabyte from a few bytes of file
        def __reduce__(self):
            return (bytes, (10**12,))

    with open(path, "wb") as f:
        pickle.dump(
            {b"data": np.zeros((1, 3072), np.uint8), b"labels": [3], b"x": Huge()}, f, protocol=2
        )
    with pytest.raises(a.DataError, match="builtins.bytes with arguments"):
        a.load_batch(path)


def test_download_refuses_an_archive_whose_member_is_a_link_and_leaves_nothing(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in FILES + ("batches.meta",):
            if name == "data_batch_1":
                info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
                continue
            src = tmp_path / "src" / name
            src.parent.mkdir(exist_ok=True)
            write_batch(src, np.zeros((2, 3072), np.uint8), [0, 1])
            tar.add(src, arcname=f"cifar-10-batches-py/{name}")
    (tmp_path / "a.tar.gz").write_bytes(buf.getvalue())
    data = tmp_path / "data"
    dest = data / "cifar-10-batches-py"
    with pytest.raises(a.DataError, match="data_batch_1 is not a regular file"):
        a.ensure_data(
            dest, True, (tmp_path / "a.tar.gz").as_uri(), hashlib.md5(buf.getvalue()).hexdigest()
        )
    assert list(data.iterdir()) == []  # no folder, complete or partial, is left behind


def test_download_refuses_an_archive_missing_a_batch(tmp_path):
    url, md5 = _archive(tmp_path)
    src = tmp_path / "cifar.tar.gz"
    with tarfile.open(src) as tar:  # the same archive without test_batch
        members = [
            (m, tar.extractfile(m).read())
            for m in tar.getmembers()
            if not m.name.endswith("test_batch")
        ]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for m, payload in members:
            tar.addfile(m, io.BytesIO(payload))
    src.write_bytes(buf.getvalue())
    data = tmp_path / "data"
    with pytest.raises(a.DataError, match="test_batch. not found"):
        a.ensure_data(
            data / "cifar-10-batches-py", True, url, hashlib.md5(buf.getvalue()).hexdigest()
        )
    assert list(data.iterdir()) == []


def test_a_stale_partial_download_is_never_reused(tmp_path):
    url, md5 = _archive(tmp_path)
    data = tmp_path / "data"
    stale = data / "cifar-10-batches-py.part"
    stale.mkdir(parents=True)
    (stale / "data_batch_1").write_bytes(b"left over from an earlier attempt")
    dest = data / "cifar-10-batches-py"
    a.ensure_data(dest, True, url, md5)
    assert a.load_batch(dest / "data_batch_1").n == 2  # the fresh archive's file, not the stale one
    assert sorted(p.name for p in data.iterdir()) == [
        "cifar-10-batches-py",
        "cifar-10-batches-py.part",
    ]


def test_the_shared_files_are_the_official_cifar10(shared_data):
    data, other = a.data_source(shared_data)
    assert data["data_official"] is True and other == []
    assert "the official CIFAR-10" in a.source_line(shared_data, other)


def test_a_copy_with_one_byte_changed_is_named_in_the_line_and_not_official(shared_data, tmp_path):
    for f in FILES:
        (tmp_path / f).symlink_to(shared_data / f)
    raw = bytearray((shared_data / "test_batch").read_bytes())
    raw[-200] ^= 1  # one pixel, one grey level
    (tmp_path / "test_batch").unlink()
    (tmp_path / "test_batch").write_bytes(bytes(raw))
    data, other = a.data_source(tmp_path)
    assert data["data_official"] is False and other == ["test_batch"]
    assert "not the official CIFAR-10 (test_batch" in a.source_line(tmp_path, other)
    assert data["data"] != a.data_source(shared_data)[0]["data"]
