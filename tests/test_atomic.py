"""atomic: a path that exists is complete; a failed write leaves nothing behind."""

import pytest

from tc_keras import atomic


def test_file_is_renamed_into_place_on_success(tmp_path):
    target = tmp_path / "a" / "b.txt"
    with atomic.Staged(target) as tmp:
        tmp.write_text("done")
        assert not target.exists() and tmp.name == ".b.txt.partial"
    assert target.read_text() == "done"
    assert sorted(p.name for p in target.parent.iterdir()) == ["b.txt"]


def test_failed_write_leaves_no_target_and_no_folder_it_created(tmp_path):
    target = tmp_path / "out" / "nested" / "clip"
    with pytest.raises(RuntimeError):
        with atomic.Staged(target, directory=True) as tmp:
            (tmp / "00000.png").write_bytes(b"x")
            raise RuntimeError("bad input")
    assert not (tmp_path / "out").exists()  # the parents it made are gone again


def test_failed_write_keeps_folders_that_existed_or_gained_files(tmp_path):
    (tmp_path / "out").mkdir()
    target = tmp_path / "out" / "new" / "clip"
    with pytest.raises(RuntimeError):
        with atomic.Staged(target, directory=True):
            (tmp_path / "out" / "new" / "other.txt").write_text("someone else's")
            raise RuntimeError("bad input")
    assert (tmp_path / "out" / "new" / "other.txt").exists() and not target.exists()
    assert not atomic.partial_path(target).exists()


def test_commit_replaces_an_existing_folder(tmp_path):
    target = tmp_path / "clip"
    target.mkdir()
    (target / "old.png").write_bytes(b"old")
    with atomic.Staged(target, directory=True) as tmp:
        (tmp / "new.png").write_bytes(b"new")
    assert sorted(p.name for p in target.iterdir()) == ["new.png"]
