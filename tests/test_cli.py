import json
import subprocess
import sys


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "textseg.cli", *args], capture_output=True, text=True, timeout=300)


def test_resolve_prints_targets_with_ids_and_colours():
    result = run_cli("resolve", "segment the liver and the left kidney")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["structures"] == ["liver", "kidney_left"]
    assert [t["name"] for t in report["labels"]] == ["liver", "kidney_left"]
    assert all(len(t["color"]) == 3 and isinstance(t["id"], int) for t in report["labels"])
    assert all(t["explanation"] for t in report["targets"])


def test_resolve_unknown_is_a_clear_error():
    result = run_cli("resolve", "segment the flux capacitor")
    assert result.returncode == 2
    assert "flux capacitor" in result.stderr and "closest" in result.stderr
    assert "Traceback" not in result.stderr


def test_segment_missing_image_is_named(tmp_path):
    result = run_cli("segment", "--image", str(tmp_path / "nope.nii.gz"), "--prompt", "liver", "--output", str(tmp_path))
    assert result.returncode == 2 and "nope.nii.gz" in result.stderr
