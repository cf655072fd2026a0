"""A workaround for a race in MONAI Label 0.8.5's background tasks (training, batch inference, scoring).

``run_background_task`` returns the task dict that its worker thread keeps mutating (it adds ``status``,
``details`` and ``gpus`` right after starting the subprocess), and ``POST /train/<model>`` serialises that
same dict: under load the encoder sees the dict change size and the client gets a 500 although the
training runs. :func:`install` makes the endpoint answer with a snapshot taken before the worker starts.
"""

from __future__ import annotations

import copy
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

__all__ = ["install"]


def install() -> None:
    """Replace the ``run_background_task`` used by ``AsyncTask.run`` with one returning a snapshot (idempotent)."""
    from monailabel.utils.async_tasks import task as task_module
    from monailabel.utils.async_tasks import utils

    if getattr(task_module.run_background_task, "_textseg_snapshot", False):
        return

    def run_background_task(request, method, callback=None, debug=False):
        task = {
            "id": str(uuid.uuid4()),
            "status": "SUBMITTED",
            "request": request,
            "start_ts": datetime.today().strftime("%Y-%m-%d %H:%M:%S"),
        }
        utils.background_tasks.setdefault(method, [])
        utils.background_processes.setdefault(method, dict())
        if utils.background_executors.get(method) is None:
            utils.background_executors[method] = ThreadPoolExecutor(max_workers=1)
        utils.background_tasks[method].append(task)
        snapshot = copy.deepcopy(task)  # before the worker thread can touch it
        if debug:
            utils._task_func(task, method)
        else:
            utils.background_executors[method].submit(utils._task_func, task, method, callback)
        return snapshot

    run_background_task._textseg_snapshot = True
    task_module.run_background_task = run_background_task
