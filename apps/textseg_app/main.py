"""MONAI Label app serving the text-prompted CT segmentation bundle.

Start with the stock CLI (from the repository root)::

    monailabel start_server --app apps/textseg_app --studies data/serve/studies \
        --conf models text_prompt,all_structures --host 127.0.0.1

``--conf`` keys: ``models`` (``all`` or a comma list of lib/configs names), ``bundle``, ``bundle_overlay``
(``real_ct``: the shipped real-CT model, default | ``tiny``: the phantom model | ``none`` | config names),
``checkpoint``, ``device`` (``auto`` | ``cpu`` | ``cuda``), ``ohif_fixes`` (``true`` | ``false``: see ``lib/ohif.py``); active learning:
``active_learning_strategy`` (default strategy, ``clasp_pe``), ``active_learning_patch_size``, ``active_learning_rounds``,
``mc_dropout_samples``, ``mc_dropout_rate``, ``active_learning_seed`` (see ``lib/settings.py``).
"""

from __future__ import annotations

import importlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Dict

import monailabel
from fastapi import HTTPException
from monailabel.config import settings as ml_settings
from monailabel.datastore.dicom import DICOMwebClientX
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.utils.others.class_utils import get_class_names

import lib.configs
import lib.ohif
import lib.patches
import textseg
from lib.activelearning import TextsegStrategy, UncertaintyScoring
from lib.datastore import TextsegDICOMWebDatastore, VersionedLocalDatastore
from lib.infers import TextPromptInferTask
from lib.settings import AppSettings
from textseg.active_learning import STRATEGIES, get_strategy
from textseg.app_support import check_image_id
from textseg.segment import check_image_path
from textseg.vocabulary import UnknownStructureError

logger = logging.getLogger(__name__)

__all__ = ["TextSegApp", "model_configs"]


def model_configs() -> Dict[str, type]:
    """Model name -> TaskConfig class, found the way MONAI Label's radiology app finds them: every class in
    ``lib/configs`` that names ``TaskConfig`` among its bases, named after its file (a new model is one new file).
    ``text_prompt`` comes first, so that OHIF's panel offers it by default."""
    configs = {}
    for path in get_class_names(lib.configs, "TaskConfig"):
        module_name, class_name = path.rsplit(".", 1)
        configs[module_name.rsplit(".", 1)[-1]] = getattr(importlib.import_module(module_name), class_name)
    return dict(sorted(configs.items(), key=lambda item: (item[0] != "text_prompt", item[0])))


class TextSegApp(MONAILabelApp):
    """Text-prompted CT segmentation: infer (prompt / all structures), train on saved labels, active learning."""

    def __init__(self, app_dir, studies, conf):
        lib.patches.install()  # MONAI Label 0.8.5: POST /train could answer 500 while the training runs
        self.settings = AppSettings.from_conf(app_dir, conf)
        if self.settings.ohif_fixes:
            lib.ohif.install()  # MONAI Label 0.8.5's OHIF panel: wait for the images, segmentation panel, colours
        names = [m.strip() for m in str(conf.get("models", "all")).split(",") if m.strip()]
        configs = model_configs()
        names = list(configs) if names == ["all"] else names
        unknown = [n for n in names if n not in configs]
        if unknown or not names:
            raise ValueError(f"--conf models: unknown model(s) {unknown}; available: all, {', '.join(configs)}")
        self.models = {}
        for name in names:
            config = configs[name]()
            config.init(name, str(self.settings.checkpoint.parent), conf, None, settings=self.settings)
            self.models[name] = config
        if not self.settings.checkpoint.exists():
            logger.error("textseg app: " + self.settings.missing_checkpoint_message() + " Until then /infer answers 503.")
        logger.info(
            f"textseg app: models {names}, bundle {self.settings.bundle_dir} {self.settings.configs}, "
            f"checkpoint {self.settings.checkpoint}, device {self.settings.device}"
        )
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name=f"textseg - text-prompted CT segmentation (textseg {textseg.__version__}, MONAI Label {monailabel.__version__})",
            description=(
                "Type what to segment ('segment the liver and kidneys'); label names, ids and colours come from the textseg vocabulary."
            ),
            version=textseg.__version__,
        )

    # --- tasks -----------------------------------------------------------------------------------------
    def init_infers(self) -> Dict[str, InferTask]:
        return {name: config.infer() for name, config in self.models.items()}

    def init_trainers(self) -> Dict[str, TrainTask]:
        trainers = {name: config.trainer() for name, config in self.models.items()}
        return {k: v for k, v in trainers.items() if v is not None}

    @property
    def uncertainty_scoring(self) -> UncertaintyScoring:
        """The one scoring task: background runs (``/scoring``) and on-the-spot scoring of the strategies."""
        if getattr(self, "_uncertainty_scoring", None) is None:
            self._uncertainty_scoring = UncertaintyScoring(self.settings)
        return self._uncertainty_scoring

    def init_scoring_methods(self) -> Dict[str, ScoringMethod]:
        return {"textseg_uncertainty": self.uncertainty_scoring}

    def init_strategies(self) -> Dict[str, Strategy]:
        """Every registered textseg strategy, the configured default first (clients list them in this order);
        BALD and PowerBALD only when MC-dropout samples are enabled (``--conf mc_dropout_samples``)."""
        scoring = self.uncertainty_scoring
        default = self.settings.active_learning_strategy
        names = [default] + [n for n in STRATEGIES if n != default]
        names = [n for n in names if not STRATEGIES[n].mc_samples or self.settings.mc_dropout_samples]
        return {n: TextsegStrategy(n, self.settings, scoring) for n in names}

    def next_sample(self, request):
        """``/activelearning/<strategy>``; ``default`` (or no strategy) means ``--conf active_learning_strategy``."""
        strategy = str(request.get("strategy") or "default")
        if strategy == "default":
            strategy = self.settings.active_learning_strategy
        try:
            strategy = get_strategy(strategy).name
        except ValueError as e:
            raise HTTPException(status_code=404, detail=f"{e} Served here: default, {', '.join(self._strategies)}.") from e
        if strategy not in self._strategies:
            raise HTTPException(
                status_code=404,
                detail=f"strategy {strategy!r} is not served (BALD needs --conf mc_dropout_samples >= 2); "
                f"served: default, {', '.join(self._strategies)}.",
            )
        try:
            return super().next_sample({**request, "strategy": strategy})
        except ValueError as e:
            raise HTTPException(status_code=422, detail=str(e)) from e

    def init_datastore(self):
        allowed = self._class_ids()
        if self.studies.startswith(("http://", "https://")):
            self.studies = self.studies.rstrip("/").strip()
            client = DICOMwebClientX(
                url=self.studies,
                session=None,
                qido_url_prefix=ml_settings.MONAI_LABEL_QIDO_PREFIX,
                wado_url_prefix=ml_settings.MONAI_LABEL_WADO_PREFIX,
                stow_url_prefix=ml_settings.MONAI_LABEL_STOW_PREFIX,
            )
            self._download_dcmqi_tools()  # a no-op when dcmqi's itkimage2segimage is installed (pip: dcmqi)
            cache = (ml_settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or ml_settings.MONAI_LABEL_DATASTORE_CACHE_PATH or "").strip()
            return TextsegDICOMWebDatastore(
                client=client,
                search_filter=ml_settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER,
                cache_path=cache or None,
                fetch_by_frame=ml_settings.MONAI_LABEL_DICOMWEB_FETCH_BY_FRAME,
                convert_to_nifti=True,
                allowed_ids=allowed,
            )
        return VersionedLocalDatastore(
            self.studies,
            allowed_ids=allowed,
            extensions=ml_settings.MONAI_LABEL_DATASTORE_FILE_EXT,
            auto_reload=ml_settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=ml_settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def _class_ids(self) -> list[int]:
        from textseg.bundle import read_config_value
        from textseg.vocabulary import structure_ids

        return structure_ids(read_config_value(self.settings.bundle_dir, self.settings.configs, "class_names"))

    # --- request checks: bad input answers 4xx with a message, the server keeps serving -----------------
    def infer(self, request, datastore=None):
        model = request.get("model")
        task = self._infers.get(model)
        if task is None:
            raise HTTPException(status_code=404, detail=f"unknown model {model!r}; available models: {sorted(self._infers)}")
        image = request.get("image")
        if isinstance(image, str):
            uploaded = os.path.isabs(image) and Path(image).parent == Path(tempfile.gettempdir()) and os.path.exists(image)
            try:
                if uploaded:
                    check_image_path(image)
                else:
                    check_image_id(image)
            except ValueError as e:
                raise HTTPException(status_code=400, detail=str(e)) from e
            if not uploaded and image not in self.datastore().list_images():
                raise HTTPException(status_code=404, detail=f"image {image!r} is not in the datastore.")
        if isinstance(task, TextPromptInferTask):
            try:
                task.targets_of(request)
            except (ValueError, UnknownStructureError) as e:
                raise HTTPException(status_code=400, detail=f"bad prompt: {e}") from e
            if not task.settings.checkpoint.exists():  # each model's own checkpoint (interactive has its own)
                raise HTTPException(status_code=503, detail=task.settings.missing_checkpoint_message())
        try:
            return super().infer(request, datastore)
        except ValueError as e:  # e.g. ValidateImaged: 2D/4D image, NaN values (named in the message)
            raise HTTPException(status_code=422, detail=str(e)) from e
