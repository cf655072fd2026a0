"""The rotation benchmark: volume rotation, the summary arithmetic, and scripts/bench_rotation.py end to end."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from textseg.experiments.rotation_benchmark import make_rotated_ct, markdown_table, rotate_volume, summarize
from textseg.phantom import make_phantom

REPO = Path(__file__).resolve().parents[2]


def _dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_rotate_volume_turns_the_anatomy_like_the_phantom_generator():
    """Rotating an upright phantom's labels by 30° about z matches the phantom generated rotated by 30°."""
    kwargs = dict(shape=(88, 72, 48), spacing=(4.0, 4.0, 4.0))
    upright, rotated = make_phantom(9, **kwargs), make_phantom(9, rotation_deg=(0, 0, 30), **kwargs)
    turned = rotate_volume(upright.label, upright.affine, (0, 0, 30), order=0, pad_value=0)
    assert turned.shape == upright.label.shape and turned.dtype == upright.label.dtype
    for label in (5, 1, 2):  # liver, spleen, right kidney
        assert _dice(turned == label, rotated.label == label) > 0.85
        assert _dice(upright.label == label, rotated.label == label) < _dice(turned == label, rotated.label == label)


def test_rotated_ct_copies_keep_the_grid(tmp_path):
    image = np.full((20, 18, 12), -1000, np.int16)
    image[5:15, 4:14, 2:10] = 40
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "ct.nii.gz")
    cases = make_rotated_ct(tmp_path / "ct.nii.gz", tmp_path / "out", {"none": (0, 0, 0), "z 90°": (0, 0, 90)})
    assert [c["rotation"] for c in cases] == ["none", "z 90°"]
    upright, turned = (nib.load(c["image"]) for c in cases)
    assert np.array_equal(np.asarray(upright.dataobj), image)
    assert turned.shape == image.shape and np.allclose(turned.affine, affine)
    assert (np.asarray(turned.dataobj) > 0).sum() == pytest.approx((image > 0).sum(), rel=0.15)


def test_summary_ratios_and_table():
    rows = [
        {"source": "phantom 1", "rotation": r, "mode": m, "structure": s, "dice": d}
        for r, m, s, d in [
            ("none", "affine only", "liver", 0.8),
            ("none", "affine only", "spleen", 0.6),
            ("z 45°", "affine only", "liver", 0.4),
            ("z 45°", "affine only", "spleen", 0.3),
            ("none", "canonicalized", "liver", 0.8),
            ("none", "canonicalized", "spleen", float("nan")),
            ("z 45°", "canonicalized", "liver", 0.78),
            ("z 45°", "canonicalized", "spleen", float("nan")),
        ]
    ]
    summary = summarize(rows, ["none", "z 45°"])
    cell = {(s["mode"], s["rotation"]): s for s in summary}
    assert cell["affine only", "z 45°"]["dice"] == pytest.approx(0.35)
    assert cell["affine only", "z 45°"]["ratio"] == pytest.approx(0.5)
    assert cell["canonicalized", "z 45°"]["drop_percent"] == pytest.approx(2.5)  # NaN (absent) structures skipped
    table = markdown_table(summary)
    assert "| phantom | canonicalized | 0.800 (1.000) | 0.780 (0.975) |" in table


@pytest.mark.slow
def test_benchmark_script_end_to_end(trained_bundle, tmp_path, capsys):
    """Tiny setting: one phantom, unrotated and 45° about z, both modes; writes the table, JSON and plot."""
    spec = importlib.util.spec_from_file_location("bench_rotation", REPO / "scripts" / "bench_rotation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "out"
    status = module.main(
        [
            "--checkpoint",
            str(trained_bundle / "model_tiny.pt"),
            "--no-train",
            "--seeds",
            "1001",
            "--rotations",
            "none",
            "z 45°",
            "--shape",
            "64",
            "56",
            "40",
            "--spacing",
            "5",
            "--no-real-ct",
            "--work-dir",
            str(tmp_path / "work"),
            "--out",
            str(out),
        ]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert "goal (phantom, canonicalized, 45° about z" in printed and "ratio" in printed
    result = json.loads((out / "rotation_benchmark.json").read_text(encoding="utf-8"))
    cells = {(s["mode"], s["rotation"]) for s in result["summary"] if s["data"] == "phantom"}
    assert cells == {(m, r) for m in ("affine only", "canonicalized") for r in ("none", "z 45°")}
    assert all(0.0 <= r["dice"] <= 1.0 or math.isnan(r["dice"]) for r in result["rows"])
    assert "| phantom | canonicalized |" in (out / "rotation_benchmark.md").read_text(encoding="utf-8")
    assert (out / "rotation_benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_script_without_checkpoint_names_the_command(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_rotation", REPO / "scripts" / "bench_rotation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--checkpoint", str(tmp_path / "missing.pt"), "--no-train", "--out", str(tmp_path)]) == 2
    assert "make demo" in capsys.readouterr().out
