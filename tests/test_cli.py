import json
import subprocess
import sys

import pytest


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "textseg.cli", *args], capture_output=True, encoding="utf-8", errors="replace", timeout=300
    )


def test_resolve_prints_targets_with_ids_and_colours():
    result = run_cli("resolve", "segment the liver and the left kidney")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["structures"] == ["liver", "kidney_left"]
    assert [t["name"] for t in report["labels"]] == ["liver", "kidney_left"]
    assert all(len(t["color"]) == 3 and isinstance(t["id"], int) for t in report["labels"])
    assert all(t["explanation"] for t in report["targets"])


def test_resolve_answers_vocabulary_structures_without_torch():
    """A cold `textseg resolve` of vocabulary names, misspellings and ordinals neither imports torch nor loads an
    encoder (it answers in well under a second)."""
    code = (
        "import json, sys; from textseg.cli import main; "
        "code = main(['resolve', 'the livr, the splen, the third left rib and L1']); "
        "print(json.dumps({'code': code, 'torch': 'torch' in sys.modules}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8", timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert json.loads(lines[-1]) == {"code": 0, "torch": False}
    report = json.loads("\n".join(lines[:-1]))
    assert report["structures"] == ["liver", "spleen", "rib_left_3", "vertebrae_L1"]


def test_resolve_unknown_is_a_clear_error():
    result = run_cli("resolve", "segment the flux capacitor")
    assert result.returncode == 2
    assert "flux capacitor" in result.stderr and "closest" in result.stderr
    assert "Traceback" not in result.stderr
    assert "Loading weights" not in result.stderr  # the closest terms come from the encoder, without its progress bar


def test_segment_missing_image_is_named(tmp_path):
    result = run_cli("segment", "--image", str(tmp_path / "nope.nii.gz"), "--prompt", "liver", "--output", str(tmp_path))
    assert result.returncode == 2 and "nope.nii.gz" in result.stderr


@pytest.mark.slow
def test_segment_refuses_a_non_ct_image_and_can_be_forced(tmp_path):
    """An MR-like volume (non-negative intensities, no air at -1000 HU) is refused with the reason, nothing is written;
    --allow-non-ct runs it anyway."""
    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng(0)
    image = tmp_path / "mr.nii.gz"
    nib.save(nib.Nifti1Image(rng.uniform(0, 1200, (64, 64, 24)).astype(np.float32), np.diag([3.0, 3.0, 3.0, 1.0])), str(image))
    result = run_cli("segment", "--image", str(image), "--prompt", "liver", "--output", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "mr.nii.gz" in result.stderr and "not Hounsfield units of a CT" in result.stderr and "--allow-non-ct" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("textseg segment: error: "), "the CLI's own message ends the output"
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.nii.gz"))
    forced = run_cli("segment", "--image", str(image), "--prompt", "liver", "--output", str(tmp_path / "out"), "--allow-non-ct")
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert nib.load(str(tmp_path / "out" / "mr_seg.nii.gz")).shape == (64, 64, 24)
