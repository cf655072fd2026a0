"""``apps/textseg_app/lib/ohif.py``: the fixes apply, exactly once each, to the OHIF build of the pinned MONAI Label,
and a fix that no longer matches is refused by name. (The browser tests in ``tests/e2e`` show what they change.)"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

APP_LIB = Path(__file__).resolve().parents[2] / "apps" / "textseg_app" / "lib"


@pytest.fixture(scope="module")
def ohif():
    name = "textseg_app_ohif_under_test"
    spec = importlib.util.spec_from_file_location(name, APP_LIB / "ohif.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)


def test_every_fix_applies_to_the_shipped_ohif(ohif):
    files = ohif.patched_files()
    stock = ohif.stock_ohif_dir()
    assert len(files) >= 3  # the mode, the MONAI Label panel, the DICOM SEG extension
    for fix in ohif.FIXES:
        (name,) = [n for n, content in files.items() if fix.new.encode("utf-8") in content]
        assert fix.old.encode("utf-8") in (stock / name).read_bytes()
    for name, content in files.items():
        assert content != (stock / name).read_bytes()
        assert len(content) > len((stock / name).read_bytes()) - 100  # a replacement, not a truncation


def test_a_fix_that_no_longer_matches_is_named(ohif, tmp_path):
    (tmp_path / "a.js").write_text("const x = 1;\nconst y = 2;\n", encoding="utf-8")
    (tmp_path / "b.js").write_text("const x = 1;\n", encoding="utf-8")
    assert ohif.patched_files(tmp_path, (ohif.OhifFix("y", "const y = 2;", "const y = 3;"),)) == {"a.js": b"const x = 1;\nconst y = 3;\n"}
    with pytest.raises(ohif.OhifFixError, match="'gone'.*no file"):
        ohif.patched_files(tmp_path, (ohif.OhifFix("gone", "const z", "const w"),))
    with pytest.raises(ohif.OhifFixError, match=r"'twice'.*a\.js \(1x\), b\.js \(1x\)"):
        ohif.patched_files(tmp_path, (ohif.OhifFix("twice", "const x = 1;", "const x = 2;"),))


def test_ohif_fixes_conf_flag():
    name = "textseg_app_settings_under_test"
    spec = importlib.util.spec_from_file_location(name, APP_LIB / "settings.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    app_dir = APP_LIB.parent
    assert module.AppSettings.from_conf(app_dir, {}).ohif_fixes is True
    assert module.AppSettings.from_conf(app_dir, {"ohif_fixes": "false"}).ohif_fixes is False
    with pytest.raises(ValueError, match="--conf ohif_fixes 'maybe'"):
        module.AppSettings.from_conf(app_dir, {"ohif_fixes": "maybe"})
