"""Dataset YAML: every accepted form and one clear BadData per error case (D7)."""

from __future__ import annotations

import sys
import types

import pytest
import yaml

from yolodist.data.spec import load_data_spec
from yolodist.errors import BadData


@pytest.fixture
def root(tmp_path):
    d = tmp_path / "ds"
    for sub in ("images/train", "images/val", "images/extra"):
        (d / sub).mkdir(parents=True)
    (d / "images/val/a.jpg").write_bytes(b"x")
    return d


def _write(path, content) -> str:
    path.write_text(yaml.safe_dump(content) if isinstance(content, dict | list) else content)
    return str(path)


def test_names_list_and_relative_path(root, tmp_path):
    y = _write(tmp_path / "d.yaml", {"path": "ds", "train": "images/train", "val": "images/val", "names": ["a", "b"]})
    spec = load_data_spec(y)
    assert spec.path == root.resolve() and spec.names == ["a", "b"] and spec.nc == 2
    assert spec.train == [(root / "images/train").resolve()] and spec.test is None and spec.download is None
    assert spec.yaml_file == (tmp_path / "d.yaml").resolve()


def test_names_dict_nc_test_and_list_of_folders(root):
    y = _write(
        root / "d.yaml",
        {"train": ["images/train", "images/extra"], "val": "images/val/a.jpg", "test": "images/val",
         "names": {1: "b", 0: "a"}, "nc": 2},
    )  # fmt: skip
    spec = load_data_spec(y)  # no 'path': the YAML's folder is the root
    assert spec.names == ["a", "b"] and spec.path == root.resolve()
    assert spec.train == [(root / "images/train").resolve(), (root / "images/extra").resolve()]
    assert spec.val == [(root / "images/val/a.jpg").resolve()] and spec.test == [(root / "images/val").resolve()]


def test_txt_list_and_path_relative_to_cwd(root, tmp_path, monkeypatch):
    (root / "train.txt").write_text("./images/val/a.jpg\n")
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    y = _write(cfg / "d.yaml", {"path": "ds", "train": "train.txt", "val": "images/val", "names": ["a"]})
    monkeypatch.chdir(tmp_path)  # "ds" does not exist beside the YAML, so it resolves against the cwd
    spec = load_data_spec(y)
    assert spec.path == root.resolve() and spec.train == [(root / "train.txt").resolve()]


def test_absolute_path_and_download_kept(root, tmp_path):
    y = _write(tmp_path / "d.yaml", {"path": str(root), "train": "images/train", "val": "images/val",
                                     "names": ["a"], "download": "https://example.com/ds.zip"})  # fmt: skip
    assert load_data_spec(y).download == "https://example.com/ds.zip"


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("- a\n- b\n", "mapping"),
        ("train: [unclosed\n", "cannot be parsed"),
        ({"train": "images/train", "val": "images/val"}, "'names'"),
        ({"val": "images/val", "names": ["a"]}, "'train'"),
        ({"train": "images/train", "names": ["a"]}, "'val'"),
        ({"train": "images/train", "val": "images/val", "names": ["a"], "nc": 2}, "nc is 2 but 1 names"),
        ({"train": "images/train", "val": "images/val", "names": {0: "a", 2: "c"}}, "0..1"),
        ({"train": "images/train", "val": "images/val", "names": "a"}, "list of class names"),
        ({"train": "images/nope", "val": "images/val", "names": ["a"]}, "images/nope does not exist"),
    ],
)
def test_errors_are_one_clear_baddata(root, content, words):
    y = _write(root / "bad.yaml", content)
    with pytest.raises(BadData) as e:
        load_data_spec(y)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_missing_yaml_file(tmp_path):
    with pytest.raises(BadData, match="not found"):
        load_data_spec(tmp_path / "nope.yaml")


def test_missing_split_with_download_says_download(root):
    y = _write(root / "d.yaml", {"train": "images/nope", "val": "images/val", "names": ["a"],
                                 "download": "bash scripts/get_coco.sh"})  # fmt: skip
    with pytest.raises(BadData, match=r"must be downloaded.*get_coco\.sh"):
        load_data_spec(y)


@pytest.mark.parametrize("alias", [None, "shapes", "shapes.yaml"])
def test_shapes_alias_calls_generator_lazily(root, monkeypatch, alias):
    y = _write(root / "gen.yaml", {"train": "images/train", "val": "images/val", "names": ["circle"]})
    calls = []
    fake = types.ModuleType("yolodist.data.synthetic")
    fake.ensure_shapes = lambda *a, **k: calls.append(1) or root / "gen.yaml"
    monkeypatch.setitem(sys.modules, "yolodist.data.synthetic", fake)
    spec = load_data_spec(alias) if alias else load_data_spec()
    assert calls == [1] and spec.names == ["circle"] and y == str(spec.yaml_file)
