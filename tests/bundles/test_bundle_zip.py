"""The bundle as a model-zoo artifact: the zip, a user's path through MONAI's own CLI without this repository's
package, and the messages for a broken download."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import BUNDLE_DIR, REPO_ROOT, relative_weight_change

from textseg.bundle_zip import BUNDLE_NAME, BundleError, bundle_version, check_bundle, export_bundle
from textseg.cli import main

META_SCHEMA = REPO_ROOT.parent / "shared" / "monai" / "meta_schema_20240725.json"
EXAMPLE_CT = REPO_ROOT / "examples" / "ct" / "example_ct.nii.gz"

# Installed in every child process through PYTHONPATH: the import system refuses this repository's textseg package (the
# editable install), so the bundle's own copy is the only one that can load; each process records which file it used.
GUARD = """
import atexit, importlib.machinery, os, sys

_REFUSED = os.environ["TEXTSEG_REFUSED_DIR"]


class _RefuseInstalledTextseg:
    def find_spec(self, name, path=None, target=None):
        if name != "textseg" and not name.startswith("textseg."):
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or (spec.origin or "").startswith(_REFUSED):  # not the bundle's copy: no other finder may try
            raise ImportError(f"{name}: the installed textseg package is refused in this test", name=name)
        return spec


sys.meta_path.insert(0, _RefuseInstalledTextseg())


@atexit.register
def _record():
    module = sys.modules.get("textseg")
    if module is not None:
        with open(os.environ["TEXTSEG_USED_LOG"], "a", encoding="utf-8") as f:
            f.write(module.__file__ + "\\n")
"""


@pytest.fixture(scope="module")
def bundle_zip(tmp_path_factory) -> Path:
    return export_bundle(tmp_path_factory.mktemp("dist"), BUNDLE_DIR)


def test_the_zip_has_the_model_zoo_layout_and_is_reproducible(bundle_zip, tmp_path):
    version = bundle_version(BUNDLE_DIR)
    assert bundle_zip.name == f"{BUNDLE_NAME}_v{version}.zip"
    with zipfile.ZipFile(bundle_zip) as archive:
        names = archive.namelist()
        assert names == sorted(names)
        assert all(n.startswith(f"{BUNDLE_NAME}/") for n in names)
        inside = {n[len(BUNDLE_NAME) + 1 :] for n in names}
        for required in ("configs/metadata.json", "configs/inference.json", "configs/train.json", "configs/evaluate.json",
                         "configs/multi_gpu_train.json", "configs/logging.conf", "docs/README.md", "LICENSE",
                         "large_files.yml", "models/model.pt", "textseg/__init__.py", "textseg/transforms.py",
                         "textseg/data/vocabulary.yaml", "datasets.yaml"):  # fmt: skip
            assert required in inside, required
        assert not any(n.startswith("textseg/experiments") or "__pycache__" in n for n in inside)
        assert archive.read(f"{BUNDLE_NAME}/models/model.pt") == (BUNDLE_DIR / "models" / "model.pt").read_bytes()
        assert archive.read(f"{BUNDLE_NAME}/configs/inference.json") == (BUNDLE_DIR / "configs" / "inference.json").read_bytes()
    again = export_bundle(tmp_path, BUNDLE_DIR)
    assert again.read_bytes() == bundle_zip.read_bytes(), "the same checkout must give the same zip"
    assert check_bundle(bundle_zip) == bundle_zip
    assert main(["check-bundle", str(bundle_zip)]) == 0


def _extract(bundle_zip: Path, target: Path) -> Path:
    with zipfile.ZipFile(bundle_zip) as archive:
        archive.extractall(target)
    return target / BUNDLE_NAME


def test_a_zip_without_the_top_level_folder_is_named(bundle_zip, tmp_path):
    flat = tmp_path / "flat.zip"
    with zipfile.ZipFile(bundle_zip) as source, zipfile.ZipFile(flat, "w") as target:
        for name in source.namelist():
            target.writestr(name[len(BUNDLE_NAME) + 1 :], source.read(name))
    with pytest.raises(BundleError, match=f"no top-level folder {BUNDLE_NAME}/"):
        check_bundle(flat)
    with pytest.raises(BundleError, match="no configs/inference.json; the bundle is"):
        check_bundle(_extract(bundle_zip, tmp_path / "d").parent)


def test_a_corrupt_zip_is_named(bundle_zip, tmp_path, capsys):
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(bundle_zip.read_bytes()[: bundle_zip.stat().st_size // 2])
    with pytest.raises(BundleError, match="not a zip file"):
        check_bundle(truncated)
    assert main(["check-bundle", str(truncated)]) == 2
    assert "textseg check-bundle: error:" in capsys.readouterr().err
    flipped = bytearray(bundle_zip.read_bytes())
    with zipfile.ZipFile(bundle_zip) as archive:
        info = archive.getinfo(f"{BUNDLE_NAME}/LICENSE")
    flipped[info.header_offset + 30 + len(info.filename) + 5] ^= 0xFF  # a byte of LICENSE's compressed data
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(bytes(flipped))
    with pytest.raises(BundleError, match="corrupt zip"):
        check_bundle(damaged)


def test_a_large_file_with_another_hash_is_refused(bundle_zip, tmp_path):
    bundle = _extract(bundle_zip, tmp_path)
    model = bundle / "models" / "model.pt"
    model.write_bytes(model.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(BundleError, match="sha256 .* is not the .* that large_files.yml lists; the file is refused"):
        check_bundle(bundle)
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "download_large_files", "--bundle_path", str(bundle)],
        capture_output=True,
        encoding="utf-8",
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode != 0 and "check of existing file failed" in result.stderr  # MONAI refuses it too


def test_an_older_bundle_version_is_refused(bundle_zip, tmp_path):
    bundle = _extract(bundle_zip, tmp_path)
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
    metadata["version"] = "0.5.0"
    (bundle / "configs" / "metadata.json").write_text(json.dumps(metadata), encoding="utf-8")
    with pytest.raises(BundleError, match="version 0.5.0; this textseg needs 0.6.0 or later"):
        check_bundle(bundle)


@pytest.mark.slow
def test_a_checkpoint_for_other_class_embeddings_is_named(bundle_zip, trained_bundle, tmp_path):
    bundle = _extract(bundle_zip, tmp_path)
    assert check_bundle(bundle, checkpoint=bundle / "models" / "model.pt") == bundle
    with pytest.raises(BundleError, match="trained with other prompt embeddings"):
        check_bundle(bundle, checkpoint=trained_bundle / "model_tiny.pt")  # the phantom model: 10 classes, not 63


def _slab(target: Path) -> Path:
    """40 slices of the shipped real CT through the kidneys and the spleen (a thin real input, quick on CPU)."""
    image = nib.load(str(EXAMPLE_CT))
    z0 = image.shape[2] // 2 + 5
    slab = image.slicer[:, :, z0 : z0 + 40]
    nib.save(slab, str(target))
    return target


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Guarded:
    """Fresh processes whose import system refuses the installed textseg (see ``GUARD``), started in ``cwd``."""

    def __init__(self, tmp_path: Path):
        guard = tmp_path / "guard"
        guard.mkdir()
        (guard / "sitecustomize.py").write_text(textwrap.dedent(GUARD), encoding="utf-8")
        self.used = tmp_path / "textseg_used.log"
        self.env = dict(
            os.environ,
            PYTHONPATH=str(guard),
            TEXTSEG_REFUSED_DIR=str(REPO_ROOT / "textseg"),
            TEXTSEG_USED_LOG=str(self.used),
            HF_HUB_OFFLINE="1",
            OMP_NUM_THREADS="1",
        )

    def __call__(self, *args: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [sys.executable, *args], cwd=cwd, env=self.env, capture_output=True, encoding="utf-8", errors="replace", timeout=timeout
        )
        if result.returncode != 0:
            pytest.fail(f"{' '.join(args[:4])} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
        return result

    def modules_used(self) -> set[str]:
        return set(self.used.read_text(encoding="utf-8").split()) if self.used.exists() else set()


@pytest.mark.slow
def test_a_user_downloads_verifies_and_runs_the_bundle_without_this_repository(bundle_zip, tmp_path):
    """The model-zoo user's path, every step in a fresh process whose working directory is outside the repository and
    whose import system refuses the installed ``textseg`` package (a ``sitecustomize`` on ``PYTHONPATH`` puts a
    meta-path finder first that raises ImportError for any ``textseg`` module under this repository's ``textseg/``);
    each process records the ``textseg`` it loaded, which must be the bundle's own copy."""
    python = _Guarded(tmp_path)
    refused = subprocess.run([sys.executable, "-c", "import textseg"], cwd=tmp_path, env=python.env, capture_output=True, encoding="utf-8")
    assert refused.returncode != 0 and "refused" in refused.stderr, "the guard must refuse the installed package"
    downloads, work = tmp_path / "bundles", tmp_path / "work"
    work.mkdir()
    python("-m", "monai.bundle", "download", "--name", BUNDLE_NAME, "--bundle_dir", str(downloads),
           "--url", bundle_zip.as_uri(), cwd=work)  # fmt: skip
    bundle = downloads / BUNDLE_NAME
    python("-m", "monai.bundle", "download_large_files", "--bundle_path", str(bundle), cwd=work)
    if META_SCHEMA.exists():  # verify_metadata would download the schema; the offline copy is in ../shared
        python("-m", "monai.bundle", "verify_metadata", "--meta_file", str(bundle / "configs" / "metadata.json"),
               "--filepath", str(META_SCHEMA), cwd=work)  # fmt: skip
    configs = f"['{bundle}/configs/inference.json','{bundle}/configs/real_ct.json']"
    # verify_net_in_out and ckpt_export do not put the bundle root on sys.path: run them from it, as in the model zoo
    python("-m", "monai.bundle", "verify_net_in_out", "network_def", "--meta_file", str(bundle / "configs" / "metadata.json"),
           "--config_file", configs, "--bundle_root", str(bundle), "--n", "2", "--device", "cpu", cwd=bundle)  # fmt: skip
    python("-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(tmp_path / "model.ts"),
           "--ckpt_file", str(bundle / "models" / "model.pt"), "--meta_file", str(bundle / "configs" / "metadata.json"),
           "--config_file", configs, "--bundle_root", str(bundle), "--use_trace", "True",
           "--input_shape", "[1, 1, 64, 64, 64]", cwd=bundle)  # fmt: skip
    assert torch.jit.load(str(tmp_path / "model.ts"))(torch.rand(1, 1, 64, 64, 64)).shape[:2] == (1, 63)
    image = _slab(tmp_path / "slab_ct.nii.gz")
    python("-m", "monai.bundle", "run", "--config_file", configs, "--bundle_root", str(bundle),
           "--input_image", str(image), "--prompt", "left kidney and spleen", "--output_dir", str(tmp_path / "out"),
           cwd=work)  # fmt: skip
    (written,) = (tmp_path / "out").glob("*_seg.nii.gz")
    out, source = nib.load(str(written)), nib.load(str(image))
    assert out.shape == source.shape and np.allclose(out.affine, source.affine, atol=1e-4)
    assert set(np.unique(np.asarray(out.dataobj)).tolist()) <= {0, 1, 3}  # spleen, left kidney: nothing else
    assert (np.asarray(out.dataobj) > 0).any(), "nothing segmented"
    used = python.modules_used()
    assert used and all(Path(u).is_relative_to(bundle) for u in used), used


@pytest.mark.slow
def test_the_extracted_bundle_evaluates_and_trains_on_two_processes(bundle_zip, trained_bundle, tiny_phantom, tmp_path):
    """evaluate.json against the phantom's label maps and multi_gpu_train.json under torchrun (2 gloo processes), both
    from the extracted bundle with the installed textseg refused (as in the test above)."""
    python = _Guarded(tmp_path)
    bundle = _extract(bundle_zip, tmp_path / "bundles")
    configs = bundle / "configs"
    common = ["--meta_file", str(configs / "metadata.json"), "--bundle_root", str(bundle), "--dataset_dir", str(tiny_phantom)]
    common += ["--num_workers", "0"]
    python("-m", "monai.bundle", "run", "--config_file",
           f"['{configs}/train.json','{configs}/evaluate.json','{configs}/tiny.json']", *common,
           "--ckpt_dir", str(trained_bundle), "--output_dir", str(tmp_path / "evaluation"), cwd=tmp_path)  # fmt: skip
    report = json.loads((tmp_path / "evaluation" / "per_structure.json").read_text(encoding="utf-8"))
    assert sum(m["val_mean_dice"]["cases"] for m in report.values()) > 0, "no structure was evaluated"
    python("-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}", "-m", "monai.bundle", "run",
           "--config_file", f"['{configs}/train.json','{configs}/multi_gpu_train.json','{configs}/tiny.json']", *common,
           "--ckpt_dir", str(tmp_path / "ddp"), "--output_dir", str(tmp_path / "ddp" / "eval"), "--epochs", "1",
           "--val_interval", "1", "--num_val", "2", "--crops_per_image", "1", cwd=tmp_path)  # fmt: skip
    assert (tmp_path / "ddp" / "model_tiny.pt").exists()
    used = python.modules_used()
    assert used and all(Path(u).is_relative_to(bundle) for u in used), used


@pytest.mark.slow
def test_fine_tuning_on_a_users_dataset_starts_from_the_shipped_weights(bundle_zip, tmp_path):
    """A user's own datasets.yaml entry with another class set (4 structures, not 63) fine-tunes the extracted bundle's
    model.pt (``--ckpt_path``): after one epoch the weights are still close to the shipped ones, the class embeddings
    are the new set's. The installed textseg is refused, as above."""
    python = _Guarded(tmp_path)
    bundle = _extract(bundle_zip, tmp_path / "bundles")
    data = tmp_path / "my_ct"
    data.mkdir()
    image, label = nib.load(str(EXAMPLE_CT)), nib.load(str(EXAMPLE_CT.parent / "example_seg_fast_force_split.nii.gz"))
    z0 = image.shape[2] // 2 - 10
    for case in ("a", "b"):
        nib.save(image.slicer[:, :, z0 : z0 + 40], str(data / f"ct_{case}.nii.gz"))
        nib.save(label.slicer[:, :, z0 : z0 + 40], str(data / f"seg_{case}.nii.gz"))
    datasets = tmp_path / "my_datasets.yaml"
    datasets.write_text(
        "version: 1\ndatasets:\n  my_ct:\n    modality: CT\n    layout: paired_folders\n    images: 'ct_*.nii.gz'\n"
        "    labels: .\n    image_prefix: ct_\n    label_prefix: seg_\n"
        "    labels_map: {1: spleen, 2: kidney_right, 3: kidney_left, 5: liver}\n",
        encoding="utf-8",
    )
    configs = bundle / "configs"
    classes = "['spleen','kidney_right','kidney_left','liver']"
    python("-m", "monai.bundle", "run", "--config_file", f"['{configs}/train.json','{configs}/real_ct.json']",
           "--meta_file", str(configs / "metadata.json"), "--bundle_root", str(bundle),
           "--ckpt_path", str(bundle / "models" / "model.pt"), "--class_names", classes,
           "--datasets", f"[{{'name': 'my_ct', 'root': '{data}'}}]", "--datasets_file", str(datasets),
           "--ckpt_dir", str(tmp_path / "ft"), "--ckpt_name", "model_ft.pt", "--output_dir", str(tmp_path / "ft" / "eval"),
           "--epochs", "1", "--val_interval", "1", "--num_val", "1", "--crops_per_image", "1", "--num_workers", "0",
           cwd=tmp_path)  # fmt: skip
    shipped = torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    tuned = torch.load(tmp_path / "ft" / "model_ft.pt", map_location="cpu", weights_only=True)
    assert tuned["class_embeddings"].shape[0] == 4 and shipped["class_embeddings"].shape[0] == 63
    change = relative_weight_change(bundle / "models" / "model.pt", tmp_path / "ft" / "model_ft.pt")
    assert 0 < change < 0.05, f"relative change {change:.3f}: the training did not start from the shipped weights"
    # the fine-tuned model evaluated on the user's entry (its only section: 'training') with the bundle's evaluate.json
    python("-m", "monai.bundle", "run", "--config_file",
           f"['{configs}/train.json','{configs}/evaluate.json','{configs}/real_ct.json']",
           "--meta_file", str(configs / "metadata.json"), "--bundle_root", str(bundle), "--class_names", classes,
           "--datasets", f"[{{'name': 'my_ct', 'root': '{data}', 'section': 'training'}}]", "--datasets_file", str(datasets),
           "--ckpt_dir", str(tmp_path / "ft"), "--ckpt_name", "model_ft.pt", "--output_dir", str(tmp_path / "ft_eval"),
           "--num_workers", "0", cwd=tmp_path)  # fmt: skip
    report = json.loads((tmp_path / "ft_eval" / "per_structure.json").read_text(encoding="utf-8"))
    assert list(report) == ["spleen", "kidney_right", "kidney_left", "liver"]
    assert all(m["val_mean_dice"]["cases"] == 2 for m in report.values())
    used = python.modules_used()
    assert used and all(Path(u).is_relative_to(bundle) for u in used), used
