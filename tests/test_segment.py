"""The segment API on phantoms and on the real CT (golden: grid kept, orientation handled), and bad input."""

import json

import nibabel as nib
import numpy as np
import pytest
from conftest import BUNDLE_DIR

from textseg.prompts import PromptError
from textseg.segment import check_image_path, segment
from textseg.vocabulary import UnknownStructureError

TINY = ("inference.json", "tiny.json")
pytestmark = pytest.mark.slow


def _segment(image, prompt, out, trained_bundle):
    return segment(image, prompt, out, BUNDLE_DIR, TINY, ckpt_path=str(trained_bundle / "model_tiny.pt"))


def _lps_copy(path, out):
    image = nib.load(str(path))
    data = np.asarray(image.dataobj)[::-1, ::-1, :]
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3], flip[1, 3] = image.shape[0] - 1, image.shape[1] - 1
    lps = nib.Nifti1Image(np.ascontiguousarray(data), image.affine @ flip)
    nib.save(lps, str(out))
    return out


def test_golden_real_ct_keeps_grid_and_handles_orientation(shared_ct_dir, trained_bundle, tmp_path):
    source = shared_ct_dir / "example_ct_sm.nii.gz"
    ras = _segment(source, "segment the liver and kidneys", tmp_path / "ras", trained_bundle)
    src = nib.load(str(source))
    out = nib.load(str(ras.label_map))
    assert out.shape == src.shape and np.allclose(out.affine, src.affine, atol=1e-4)
    assert set(ras.masks) == {"liver", "kidney_left", "kidney_right"}
    assert ras.overlay.stat().st_size > 10_000
    report = json.loads(ras.report.read_text(encoding="utf-8"))
    assert report["targets"] == ras.targets

    lps_path = _lps_copy(source, tmp_path / "example_ct_lps.nii.gz")
    assert nib.aff2axcodes(nib.load(str(lps_path)).affine) == ("L", "P", "S")
    lps = _segment(lps_path, "segment the liver and kidneys", tmp_path / "lps", trained_bundle)
    lps_out = nib.load(str(lps.label_map))
    assert lps_out.shape == src.shape and np.allclose(lps_out.affine, nib.load(str(lps_path)).affine, atol=1e-4)
    # same anatomy, same answer: back in RAS the two label maps agree voxel by voxel
    a = np.asarray(nib.as_closest_canonical(out).dataobj)
    b = np.asarray(nib.as_closest_canonical(lps_out).dataobj)
    assert (a == b).mean() > 0.99


def test_phantom_result_files(tiny_phantom, trained_bundle, tmp_path):
    image = sorted((tiny_phantom / "imagesTs").glob("*.nii.gz"))[0]
    result = _segment(image, "left kidney", tmp_path, trained_bundle)
    assert result.targets == ["kidney_left"]
    mask = nib.load(str(result.masks["kidney_left"]))
    assert mask.shape == nib.load(str(image)).shape
    assert not list(tmp_path.glob(".tmp-*")), "temporary files left behind"


def test_bad_prompt_keeps_earlier_results(tiny_phantom, trained_bundle, tmp_path):
    image = sorted((tiny_phantom / "imagesTs").glob("*.nii.gz"))[0]
    first = _segment(image, "liver", tmp_path, trained_bundle)
    before = first.label_map.read_bytes()
    with pytest.raises(UnknownStructureError, match="flux capacitor"):
        _segment(image, "segment the flux capacitor", tmp_path, trained_bundle)
    with pytest.raises(PromptError, match="empty prompt"):
        _segment(image, "  ", tmp_path, trained_bundle)
    with pytest.raises(PromptError, match="not trained on"):
        _segment(image, "left femur", tmp_path, trained_bundle)
    assert first.label_map.read_bytes() == before


def _corrupt_gzip(path):
    path.write_bytes(b"\x1f\x8b\x08garbage")


def _two_d(path):
    nib.save(nib.Nifti1Image(np.zeros((8, 8), np.float32), np.eye(4)), str(path))


def _four_d(path):
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 3), np.float32), np.eye(4)), str(path))


@pytest.mark.parametrize(
    "make,match",
    [(_corrupt_gzip, "not a readable NIfTI"), (_two_d, "expected a 3D volume"), (_four_d, "4D image")],
)
def test_bad_images_are_named(tmp_path, make, match):
    path = tmp_path / "broken.nii.gz"
    make(path)
    with pytest.raises(ValueError, match=match) as raised:
        check_image_path(path)
    assert "broken.nii.gz" in str(raised.value)


def test_truncated_nifti_is_named(tmp_path, tiny_phantom):
    image = sorted((tiny_phantom / "imagesTs").glob("*.nii.gz"))[0]
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated.nii.gz"):
        check_image_path(truncated)


def test_segment_resolves_the_prompt_once(tiny_phantom, trained_bundle, tmp_path, monkeypatch):
    """segment() resolves the prompt once and hands the resolution to the bundle (its targets and AnswerPromptd)."""
    from textseg.prompts import PromptResolver

    calls = []
    original = PromptResolver.resolve
    monkeypatch.setattr(PromptResolver, "resolve", lambda self, prompt: (calls.append(prompt), original(self, prompt))[1])
    image = sorted((tiny_phantom / "imagesTs").glob("*.nii.gz"))[0]
    result = _segment(image, "the left kidney and the liver", tmp_path, trained_bundle)
    assert result.targets == ["kidney_left", "liver"]
    assert calls == ["the left kidney and the liver"]
