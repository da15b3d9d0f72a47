"""A dataset YAML whose splits are missing: ``download:`` URLs are fetched and unpacked, scripts never run."""

from __future__ import annotations

import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_port
from tests.unit.test_download import serve
from yolodist.data.spec import load_data_spec
from yolodist.data.synthetic import SHAPES_NAMES, ensure_shapes
from yolodist.errors import BadData
from yolodist.utils.download import DownloadFailed


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory) -> Path:
    """A tiny generated dataset folder named ``myds`` (images/, labels/, shapes.yaml)."""
    return ensure_shapes(tmp_path_factory.mktemp("src") / "myds", n_train=4, n_val=2, img_size=64, seed=0).parent


def _zip_dir(src: Path, archive: Path, *, prefix: str, only: str = "") -> Path:
    """Zip ``src`` (or its subfolder ``only``) with member names under ``prefix``."""
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted((src / only).rglob("*")):
            zf.write(p, f"{prefix}{p.relative_to(src)}")
    return archive


def _write_yaml(path: Path, download: object, data_path: str = "../datasets/myds") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    content = {"path": data_path, "train": "images/train", "val": "images/val", "names": list(SHAPES_NAMES)}
    path.write_text(yaml.safe_dump({**content, "download": download}))
    return path


def _assert_resolved(spec, datasets: Path) -> None:
    root = datasets / "myds"
    assert spec.path == root.resolve() and spec.nc == len(SHAPES_NAMES)
    assert spec.train == [(root / "images/train").resolve()] and spec.val == [(root / "images/val").resolve()]
    assert len(list((root / "images/train").glob("*.jpg"))) == 4 and len(list((root / "labels/val").glob("*"))) == 2


def test_missing_dataset_is_fetched_unpacked_and_resolved(shapes_dir, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    _zip_dir(shapes_dir, site / "myds.zip", prefix="myds/")  # upstream's layout: one top folder named like path
    with serve(site) as url:
        y = _write_yaml(tmp_path / "cfg" / "d.yaml", f"{url}/myds.zip")
        spec = load_data_spec(y)
    datasets = tmp_path / "datasets"
    _assert_resolved(spec, datasets)
    assert sorted(p.name for p in datasets.iterdir()) == ["myds"]  # unpacked beside path; the archive removed
    assert spec.download == f"{url}/myds.zip"
    assert load_data_spec(y).path == spec.path  # the server is gone: a second load needs no network


def test_a_list_of_archives_and_a_flat_layout(shapes_dir, tmp_path):
    """Each URL is fetched; an archive without the top folder is unpacked into path itself."""
    site = tmp_path / "site"
    site.mkdir()
    _zip_dir(shapes_dir, site / "images.zip", prefix="", only="images")  # images/... (flat)
    with tarfile.open(site / "labels.tar.gz", "w:gz") as tf:
        tf.add(shapes_dir / "labels", "myds/labels")  # myds/labels/... (upstream layout)
    with serve(site) as url:
        y = _write_yaml(tmp_path / "cfg" / "d.yaml", [f"{url}/images.zip", f"{url}/labels.tar.gz"])
        _assert_resolved(load_data_spec(y), tmp_path / "datasets")
    assert sorted(p.name for p in (tmp_path / "datasets" / "myds").iterdir()) == ["images", "labels"]


def test_offline_message_and_the_archive_put_there_by_hand(shapes_dir, tmp_path):
    url = f"http://127.0.0.1:{free_port()}/myds.zip"
    y = _write_yaml(tmp_path / "cfg" / "d.yaml", url)
    archive = tmp_path / "datasets" / "myds.zip"
    with pytest.raises(DownloadFailed) as e:
        load_data_spec(y)
    assert f"could not download {url}" in str(e.value) and f"put it at {archive}" in str(e.value)
    assert not (tmp_path / "datasets" / "myds").exists()
    archive.parent.mkdir()
    _zip_dir(shapes_dir, archive, prefix="myds/")  # what the message asks the user to do
    _assert_resolved(load_data_spec(y), tmp_path / "datasets")
    assert not archive.exists()


def test_an_archive_without_the_splits_says_so(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    with zipfile.ZipFile(site / "myds.zip", "w") as zf:
        zf.writestr("myds/readme.txt", "no images here")
    with serve(site) as url:
        y = _write_yaml(tmp_path / "cfg" / "d.yaml", f"{url}/myds.zip")
        with pytest.raises(BadData, match=r"train path .* does not exist even after downloading .*myds\.zip"):
            load_data_spec(y)


def test_an_unsafe_dataset_archive_is_refused(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    with zipfile.ZipFile(site / "myds.zip", "w") as zf:
        zf.writestr("myds/images/train/a.jpg", b"x")
        zf.writestr("myds/../../escaped.txt", b"x")
    with serve(site) as url:
        y = _write_yaml(tmp_path / "cfg" / "d.yaml", f"{url}/myds.zip")
        with pytest.raises(BadData, match="unsafe member"):
            load_data_spec(y)
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "datasets" / "myds").exists()


@pytest.mark.parametrize(
    "script",
    [
        "bash {tmp}/get.sh",
        "import pathlib\npathlib.Path(r'{tmp}/SENTINEL').touch()\n",
        "from pathlib import Path; Path(r'{tmp}/SENTINEL').touch()",
    ],
)
def test_a_script_download_is_refused_and_not_run(tmp_path, script):
    (tmp_path / "get.sh").write_text(f"touch '{tmp_path}/SENTINEL'\n")
    y = _write_yaml(tmp_path / "cfg" / "d.yaml", script.format(tmp=tmp_path))
    with pytest.raises(BadData) as e:
        load_data_spec(y)
    msg = str(e.value)
    assert "download is a script" in msg and "does not run code" in msg and "run it yourself" in msg
    assert "\n" not in msg and script.format(tmp=tmp_path).splitlines()[0][:40] in msg
    assert not (tmp_path / "SENTINEL").exists()


def test_present_splits_never_download(tmp_path, shapes_dir):
    shutil.copytree(shapes_dir, tmp_path / "datasets" / "myds")
    y = _write_yaml(tmp_path / "cfg" / "d.yaml", "bash never-run.sh")  # a script is fine while nothing is missing
    _assert_resolved(load_data_spec(y), tmp_path / "datasets")


def test_a_malformed_download_entry(tmp_path):
    y = _write_yaml(tmp_path / "cfg" / "d.yaml", {"url": "x"})
    with pytest.raises(BadData, match="'download' must be a URL, a list of URLs or a script"):
        load_data_spec(y)
