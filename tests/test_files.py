"""Atomic writes: a failed write leaves the earlier file intact and no temporary file behind."""

import json

import pytest

from textseg.files import atomic_path, write_atomic, write_result


def test_write_atomic_replaces_and_keeps_utf8(tmp_path):
    target = tmp_path / "sub" / "table.md"
    write_atomic(target, "first")
    write_atomic(target, "rotation 45°")
    assert target.read_text(encoding="utf-8") == "rotation 45°"
    assert [p.name for p in target.parent.iterdir()] == ["table.md"]


def test_failed_write_keeps_the_earlier_result(tmp_path):
    target = tmp_path / "model.pt"
    target.write_bytes(b"earlier")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"earlier"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_temporary_file_keeps_the_target_suffixes(tmp_path):
    with atomic_path(tmp_path / "seg.nii.gz") as tmp:
        assert tmp.name.endswith(".nii.gz") and tmp.parent == tmp_path
        tmp.write_bytes(b"x")
    with atomic_path(tmp_path / "seg.nii.gz", suffix=".png") as tmp:
        assert tmp.name.endswith(".png")
        tmp.write_bytes(b"y")
    assert (tmp_path / "seg.nii.gz").read_bytes() == b"y"


def test_a_result_is_written_as_json_and_its_markdown_table(tmp_path):
    stem = tmp_path / "runs" / "threshold_sweep"
    result = {"thresholds": [0.5], "cases": [{"case": "ct.nii.gz", "dice": {"liver": 0.9}}]}
    paths = write_result(stem, result, "| liver |\n| 0.9 |\n")
    assert paths == (tmp_path / "runs" / "threshold_sweep.json", tmp_path / "runs" / "threshold_sweep.md")
    assert json.loads(paths[0].read_text(encoding="utf-8")) == result
    assert paths[1].read_text(encoding="utf-8") == "| liver |\n| 0.9 |\n"
    assert sorted(p.name for p in paths[0].parent.iterdir()) == ["threshold_sweep.json", "threshold_sweep.md"]
