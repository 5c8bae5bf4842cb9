import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED_DATA = Path(
    os.environ.get("CIFAR10_DIR", ROOT.parent / "shared" / "data" / "cifar-10-batches-py")
)
FILES = (
    "data_batch_1",
    "data_batch_2",
    "data_batch_3",
    "data_batch_4",
    "data_batch_5",
    "test_batch",
)


def write_batch(path, data, labels, protocol=2):
    """A batch file in the official layout (the official files are protocol-2 pickles with bytes
    keys)."""
    batch = {
        b"batch_label": b"testing batch",
        b"labels": list(labels),
        b"data": data,
        b"filenames": [b"img_%d.png" % i for i in range(len(labels))],
    }
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=protocol)


def random_batches(folder, n):
    """Six batches of n random images in the official format: {name: (data, labels)}."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    content = {}
    for name in FILES:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n)
        write_batch(folder / name, data, labels)
        content[name] = (data, labels)
    return content


@pytest.fixture
def tiny_cifar(tmp_path):
    """Six tiny batches of random images: (folder, {name: (data, labels)})."""
    return tmp_path / "cifar", random_batches(tmp_path / "cifar", 40)


@pytest.fixture(scope="session")
def quick_cifar(tmp_path_factory):
    """Six batches of 200 random images: the smallest data a --quick run takes (its folder)."""
    folder = tmp_path_factory.mktemp("quick_cifar") / "cifar"
    random_batches(folder, 200)
    return folder


@pytest.fixture
def shared_data():
    if not (SHARED_DATA / "data_batch_1").is_file():
        pytest.skip(f"CIFAR-10 batches not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory):
    """One --quick run of Exercises 1-4 on the shared data, seed 3, for every test that reads
    one: (folder, results.json, the finished process)."""
    if not (SHARED_DATA / "data_batch_1").is_file():
        pytest.skip(f"CIFAR-10 batches not found at {SHARED_DATA}")
    out = tmp_path_factory.mktemp("quick") / "run"
    done = subprocess.run([sys.executable, str(ROOT / "assignment2.py"), "--quick", "--data-dir",
                           str(SHARED_DATA), "--seed", "3", "--out-dir", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out, json.loads((out / "results.json").read_text()), done
