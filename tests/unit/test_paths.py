"""increment_path: upstream numbering, exist_ok, file suffixes, and no two racers sharing a directory."""

import threading

from yolodist.utils.paths import increment_path


def test_free_path_is_returned_unchanged(tmp_path):
    base = tmp_path / "runs" / "train" / "exp"
    assert increment_path(base) == base
    assert not base.exists()  # without mkdir nothing is created


def test_numbering_starts_at_two_and_fills_gaps(tmp_path):
    base = tmp_path / "exp"
    base.mkdir()
    assert increment_path(base) == tmp_path / "exp2"
    (tmp_path / "exp2").mkdir()
    (tmp_path / "exp4").mkdir()
    assert increment_path(base) == tmp_path / "exp3"  # first free number, as upstream
    assert increment_path(base, sep="_") == tmp_path / "exp_2"


def test_exist_ok_reuses_the_directory(tmp_path):
    base = tmp_path / "exp"
    base.mkdir()
    assert increment_path(base, exist_ok=True) == base
    nested = tmp_path / "a" / "b"
    assert increment_path(nested, exist_ok=True, mkdir=True) == nested and nested.is_dir()


def test_files_keep_their_suffix_directories_do_not_split(tmp_path):
    (tmp_path / "best.pt").write_bytes(b"")
    assert increment_path(tmp_path / "best.pt") == tmp_path / "best2.pt"
    (tmp_path / "exp.v1").mkdir()
    assert increment_path(tmp_path / "exp.v1") == tmp_path / "exp.v12"


def test_mkdir_creates_parents_and_successive_runs_differ(tmp_path):
    base = tmp_path / "runs" / "train" / "exp"
    got = [increment_path(base, mkdir=True) for _ in range(3)]
    assert [p.name for p in got] == ["exp", "exp2", "exp3"]
    assert all(p.is_dir() for p in got)


def test_concurrent_runs_never_share_a_directory(tmp_path):
    n = 12
    start = threading.Barrier(n)
    got = []
    lock = threading.Lock()

    def racer():
        start.wait()  # all threads ask at the same moment
        path = increment_path(tmp_path / "exp", mkdir=True)
        with lock:
            got.append(path)

    threads = [threading.Thread(target=racer) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(got) == n and len(set(got)) == n
    assert {p.name for p in got} == {"exp", *(f"exp{i}" for i in range(2, n + 1))}
