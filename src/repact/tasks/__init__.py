"""Tasks beyond classification: ``get_task("detection" | "segmentation")``; see :mod:`repact.tasks.base`."""

from __future__ import annotations

from .base import TASKS, Task, get_task, list_tasks, register_task, to_device
from .detection import DetectionTask
from .segmentation import SegmentationTask

__all__ = ["TASKS", "DetectionTask", "SegmentationTask", "Task", "get_task", "list_tasks", "register_task",
           "to_device"]
