"""A job's source radiograph as a PNG for the worklist page, boxes and warning burned in.

The same pixels the burned-in Secondary Capture shows: the model's input image
(:func:`node.imaging.radiograph.radiograph_to_image`, the official windowing recipe)
without its square padding, drawn on by :func:`node.results.sc.render_burned_in`, so
the page carries the NOT FOR DIAGNOSTIC USE / UNVERIFIED banner (and TEST MODEL) in the
image itself. Scaled down to fit ``max_side`` for the browser.
"""

from __future__ import annotations

import io
import logging
import threading
from collections import OrderedDict
from pathlib import Path

from PIL import Image
from sqlalchemy.exc import NoResultFound

from node.imaging.errors import ImagingError
from node.imaging.radiograph import radiograph_to_image
from node.pipeline.record import CxrRecord, read_record
from node.results.sc import render_burned_in
from node.store.index import Index

log = logging.getLogger(__name__)

__all__ = ["ImageUnavailable", "ImageUnrenderable", "JobImages"]


class ImageUnavailable(LookupError):
    """The job has no picture to show (yet); the message says why."""


class ImageUnrenderable(ValueError):
    """The job's source image exists but can't be turned into a picture."""


class JobImages:
    """Renders and keeps the last ``capacity`` pictures (a job's picture never changes)."""

    def __init__(self, index: Index, *, max_side: int = 1024, capacity: int = 32) -> None:
        self.index = index
        self.max_side = max_side
        self._capacity = capacity
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def png(self, job_id: int) -> bytes:
        """The PNG of ``job_id``'s source radiograph with its boxes.

        Raises ImageUnavailable (unknown job, no radiograph recorded, file gone) or
        ImageUnrenderable (the file doesn't convert).
        """
        with self._lock:
            if job_id in self._cache:
                self._cache.move_to_end(job_id)
                return self._cache[job_id]
        data = self._render(job_id)
        with self._lock:
            self._cache[job_id] = data
            while len(self._cache) > self._capacity:
                self._cache.popitem(last=False)
        return data

    def _render(self, job_id: int) -> bytes:
        try:
            job = self.index.job(job_id)
        except NoResultFound:
            raise ImageUnavailable(f"job {job_id} is not in the index") from None
        record = read_record(job.task, job.record, job_id=job.id)
        if not isinstance(record, CxrRecord) or not record.image:
            raise ImageUnavailable(f"job {job_id} ({job.task}, {job.state}) records no radiograph")
        image_uid = record.image
        stored = self.index.instance_path(image_uid)
        path = Path(stored) if stored else None
        if path is None or not path.exists():
            raise ImageUnavailable(f"job {job_id}: source image {image_uid} is no longer stored")
        try:
            radiograph = radiograph_to_image(path)
        except ImagingError as e:
            raise ImageUnrenderable(f"job {job_id}: {e}") from e
        picture = radiograph.source_picture()
        rendered = render_burned_in(
            picture,
            record.boxes,
            impression=record.impression or "",
            model_label=record.model or "unknown model",
            is_test_model=record.test_model,
        )
        rendered.thumbnail((self.max_side, self.max_side), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        rendered.save(out, format="PNG", optimize=False)
        return out.getvalue()
