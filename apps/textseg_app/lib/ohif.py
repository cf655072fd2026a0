"""The OHIF viewer that MONAI Label 0.8.5 ships, served with six small fixes to its MONAI Label mode and panel.

MONAI Label serves a prebuilt OHIF v3 under ``/ohif``. Its MONAI Label panel (``MonaiLabelPanel.onInfo``) builds the
labelmap as soon as the user presses connect, without waiting for OHIF's viewports, and colours it after a fixed
1 s timeout. On a busy machine the panel loses that race: page errors, and every later Run draws nothing. Its mode
also shows no segmentation panel, so a user cannot save a label from the viewer. Rebuilding the extension from the
monailabel source release needs Node, the whole OHIF monorepo and its ``yarn install`` (gigabytes, longer than CI
allows), so this module patches the shipped JavaScript text instead, in memory, when the app starts:

- ``wait_for_images``: ``onInfo`` waits until every viewport shows the loaded image, creates the labelmap, waits
  until it exists and only then colours its segments (upstream fix: ``onInfo`` awaits the viewports and the
  labelmap instead of ``setTimeout``);
- ``recreate_segmentation``: ``updateView`` rebuilds segmentation ``1`` when it is missing (deleted by the user,
  or never created) instead of throwing in ``getLabelmapVolume``;
- ``vocabulary_colours``: segments take the colours the app publishes in ``/info`` (``label_colors``, from the
  textseg vocabulary) rather than the panel's own table;
- ``segmentation_panel``: the mode's right side holds OHIF's segmentation panel beside MONAI Label's, whose menu
  has "Export DICOM SEG";
- ``export_to_the_data_source``: that export stores the DICOM SEG to the active data source (the study's DICOMweb
  server, through the app's proxy); the shipped command is called without a data source and throws;
- ``load_empty_segments``: OHIF opens a DICOM SEG that has empty segments (its own exports list every segment of the
  labelmap) instead of failing on their missing centroids.

Each fix is an exact text replacement that must match exactly once in the shipped files. If MONAI Label is
upgraded and a fix no longer matches, the app logs which one and serves the stock viewer unchanged. The
``ohif_fixes`` conf key (``true`` by default) turns this off.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

__all__ = ["OhifFix", "FIXES", "OhifFixError", "patched_files", "install"]

logger = logging.getLogger(__name__)


class OhifFixError(RuntimeError):
    """A fix does not match the shipped OHIF files exactly once."""


@dataclass(frozen=True)
class OhifFix:
    """Replace ``old`` by ``new`` in the one shipped ``.js`` file that contains ``old`` (exactly once)."""

    name: str
    old: str
    new: str


_HELPERS = """function textsegSleep(ms) {
  return new Promise(resolve => setTimeout(resolve, ms));
}
// textseg: true once every viewport of the first rendering engine renders an image (a stack, or a loaded volume)
function textsegImagesShown() {
  const engine = (dist_esm.getRenderingEngines() || [])[0];
  const viewports = engine ? engine.getViewports() : [];
  return viewports.length > 0 && viewports.every(v => v.getActors().some(a => {
    if (!a.referencedId) {
      return false;
    }
    const volume = dist_esm.cache.getVolume(a.referencedId);
    return !volume || (volume.loadStatus && volume.loadStatus.loaded);
  }));
}
async function textsegWaitFor(condition, seconds) {
  const deadline = Date.now() + seconds * 1000;
  while (!condition()) {
    if (Date.now() > deadline) {
      return false;
    }
    await textsegSleep(200);
  }
  return true;
}
// textseg: the colour the app publishes for a label in /info (models.<m>.label_colors), as RGBA, or null
function textsegLabelColor(data, label) {
  for (const model of Object.values(data.models || {})) {
    const rgb = (model.label_colors || {})[label];
    if (rgb) {
      return [rgb[0], rgb[1], rgb[2], 255];
    }
  }
  return null;
}
function getLabelColor(label, rgb = true, random = true) {"""

_OLD_CONNECT = """      const initialSegs = segmentations[0].config.segments;
      const volumeLoadObject = dist_esm.cache.getVolume('1');
      if (!volumeLoadObject) {
        this.props.commandsManager.runCommand('loadSegmentationsForViewport', {
          segmentations
        });

        // Wait for Above Segmentations to be added/available
        setTimeout(() => {
          const {
            viewport
          } = this.getActiveViewportInfo();
          for (const segmentIndex of Object.keys(initialSegs)) {
            esm.segmentation.config.color.setSegmentIndexColor(viewport.viewportId, '1', initialSegs[segmentIndex].segmentIndex, initialSegs[segmentIndex].color);
          }
        }, 1000);
      }"""

_NEW_CONNECT = """      const initialSegs = segmentations[0].config.segments;
      // textseg: build the labelmap once the viewports show the image, colour it once it exists
      if (!textsegImagesShown()) {
        const wait = this.notification.show({
          title: 'MONAI Label',
          message: 'Waiting for the images to load',
          type: 'info',
          duration: 120000
        });
        await textsegWaitFor(textsegImagesShown, 600);
        hideNotification(wait, this.notification);
      }
      const {
        segmentationService: textsegSegmentations
      } = this.props.servicesManager.services;
      if (!textsegSegmentations.getSegmentation('1')) {
        await this.props.commandsManager.runCommand('loadSegmentationsForViewport', {
          segmentations
        });
        await textsegWaitFor(() => {
          const s = textsegSegmentations.getSegmentation('1');
          return s && s.representationData && s.representationData.Labelmap && textsegSegmentations.getLabelmapVolume('1');
        }, 120);
        const {
          viewport
        } = this.getActiveViewportInfo();
        for (const segmentIndex of Object.keys(initialSegs)) {
          esm.segmentation.config.color.setSegmentIndexColor(viewport.viewportId, '1', initialSegs[segmentIndex].segmentIndex, initialSegs[segmentIndex].color);
        }
      }"""

_OLD_UPDATE = "this.updateView = async (response, model_id, labels, override = false, label_class_unknown = false, sidx = -1) => {"

_NEW_UPDATE = (
    _OLD_UPDATE
    + """
      // textseg: a missing segmentation 1 (deleted, or never built) is rebuilt instead of failing in getLabelmapVolume
      if (!this.props.servicesManager.services.segmentationService.getSegmentation('1')) {
        await this.onInfo(this.serverURI);
      }"""
)

FIXES: tuple[OhifFix, ...] = (
    OhifFix("wait_for_images", "function getLabelColor(label, rgb = true, random = true) {", _HELPERS),
    OhifFix("wait_for_images", _OLD_CONNECT, _NEW_CONNECT),
    OhifFix("recreate_segmentation", _OLD_UPDATE, _NEW_UPDATE),
    OhifFix(
        "vocabulary_colours",
        "              color: this.segmentColor(label)\n",
        "              color: textsegLabelColor(response.data, label) || this.segmentColor(label)\n",
    ),
    OhifFix(
        "export_to_the_data_source",
        "    storeSegmentation: async ({\n      segmentationId,\n      dataSource\n    }) => {",
        "    storeSegmentation: async ({\n      segmentationId,\n      dataSource = extensionManager.getActiveDataSource()[0]\n    }) => {",
    ),
    OhifFix("load_empty_segments", "segDisplaySet.centroids.get(index).image ||", "segDisplaySet.centroids.get(index)?.image ||"),
    OhifFix("load_empty_segments", "segDisplaySet.centroids.get(index).world ||", "segDisplaySet.centroids.get(index)?.world ||"),
    OhifFix(
        "segmentation_panel",
        "            rightPanels: [monailabel.monaiLabel],\n",
        "            rightPanels: [monailabel.monaiLabel, '@ohif/extension-cornerstone.panelModule.panelSegmentation'],\n",
    ),
)
"""The fixes, in the order they are applied (a later fix may match text an earlier one wrote)."""


def stock_ohif_dir() -> Path:
    """The OHIF build MONAI Label serves under ``/ohif``."""
    import monailabel.endpoints.ohif as ohif_endpoint

    return Path(ohif_endpoint.__file__).resolve().parent / "static" / "ohif"


def patched_files(ohif_dir: str | Path | None = None, fixes: tuple[OhifFix, ...] = FIXES) -> dict[str, bytes]:
    """File name -> patched content of every shipped ``.js`` file that a fix touches.

    Raises:
        OhifFixError: a fix's text occurs in no file, or more than once.
    """
    ohif_dir = Path(ohif_dir) if ohif_dir else stock_ohif_dir()
    texts = {p.name: p.read_text(encoding="utf-8") for p in sorted(ohif_dir.glob("*.js"))}
    changed: set[str] = set()
    for fix in fixes:
        hits = {name: text.count(fix.old) for name, text in texts.items() if fix.old in text}
        if sum(hits.values()) != 1:
            found = ", ".join(f"{n} ({c}x)" for n, c in hits.items()) or "no file"
            raise OhifFixError(f"OHIF fix {fix.name!r}: its text must occur exactly once in {ohif_dir}/*.js, found in {found}")
        (name,) = hits
        texts[name] = texts[name].replace(fix.old, fix.new)
        changed.add(name)
    return {name: texts[name].encode("utf-8") for name in sorted(changed)}


def install() -> bool:
    """Serve the fixed files under ``/ohif`` in this MONAI Label server process; the rest stays stock.

    Returns False (and logs why) when a fix does not match this MONAI Label's OHIF build: the stock viewer is served.
    """
    import monailabel.endpoints.ohif as ohif_endpoint
    from fastapi.responses import Response

    stock = getattr(ohif_endpoint.get_ohif, "_textseg_stock", ohif_endpoint.get_ohif)
    try:
        files = patched_files()
    except (OhifFixError, OSError) as e:
        logger.warning(f"textseg app: serving MONAI Label's stock OHIF, the fixes do not apply: {e}")
        ohif_endpoint.get_ohif = stock
        return False

    def get_ohif(path: str):
        content = files.get(path)
        if content is None:
            return stock(path)
        return Response(content=content, media_type="application/javascript")

    get_ohif._textseg_stock = stock
    ohif_endpoint.get_ohif = get_ohif
    logger.info(f"textseg app: OHIF served with fixes {sorted({f.name for f in FIXES})} in {sorted(files)}")
    return True
