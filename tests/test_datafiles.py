"""handgrad.datafiles.download: all four files or nothing, the whole reason when it fails, nothing left behind."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torchvision
from conftest import write_fake_mnist

from handgrad.datafiles import download, expected_files
from handgrad.errors import ConfigError

REASON = ("Error downloading train-images-idx3-ubyte.gz:\nTried https://ossci-datasets.s3.amazonaws.com/mnist/, "
          "got:\n<urlopen error [Errno -2] Name or service not known>\nTried http://yann.lecun.com/exdb/mnist/, "
          "got:\n<urlopen error [Errno -2] Name or service not known>\n")


def offline(self):
    os.makedirs(self.raw_folder, exist_ok=True)  # as torchvision does before it tries the mirrors
    raise RuntimeError(REASON)


def arrives(self):
    """A download that works: the four files (a tiny MNIST) land in torchvision's raw folder, <root>/MNIST/raw/."""
    write_fake_mnist(Path(self.root))


@pytest.fixture
def no_network(monkeypatch):
    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)


def test_a_failed_download_gives_the_whole_reason_on_one_line_and_how_to_work_offline(tmp_path, no_network):
    root = tmp_path / "new" / "data"
    with pytest.raises(ConfigError) as error:
        download("mnist", str(root))
    message = str(error.value)
    assert message == (
        f"could not download mnist ({' '.join(REASON.split())}); nothing was written. Offline, put "
        "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte "
        f"(uncompressed IDX files) into {root}/MNIST/raw/ and pass --data.download false, or point --data.root at a "
        "folder that holds MNIST/raw/")
    assert not (tmp_path / "new").exists()  # neither the root nor the folders above it that it made


def test_a_root_that_existed_is_left_as_it_was(tmp_path, no_network):
    (tmp_path / "mine.txt").write_text("kept")
    with pytest.raises(ConfigError):
        download("mnist", str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["mine.txt"]


def test_ctrl_c_during_a_download_leaves_nothing(tmp_path, monkeypatch):
    def interrupted(self):
        os.makedirs(self.raw_folder, exist_ok=True)
        with open(os.path.join(self.raw_folder, "train-images-idx3-ubyte.gz"), "wb") as half:
            half.write(b"\x1f\x8b half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", interrupted)
    with pytest.raises(KeyboardInterrupt):
        download("mnist", str(tmp_path / "data"))
    assert list(tmp_path.iterdir()) == []


def test_the_files_are_moved_into_place_when_all_arrived(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets.MNIST, "download", arrives)
    timeout = socket.getdefaulttimeout()
    download("mnist", str(tmp_path))
    assert all(os.path.isfile(path) for path in expected_files("mnist", str(tmp_path)))
    assert sorted(os.listdir(tmp_path)) == ["MNIST"]  # the hidden folder it downloaded into is gone
    assert socket.getdefaulttimeout() == timeout


def test_nothing_is_fetched_when_the_files_are_there(tmp_path, no_network):
    write_fake_mnist(tmp_path)
    download("mnist", str(tmp_path))  # offline, and no error: nothing to fetch
