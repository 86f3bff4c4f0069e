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

from PIL import Image
from sqlalchemy.exc import NoResultFound

from node.http.worklist import source_path
from node.imaging.errors import ImagingError
from node.imaging.radiograph import radiograph_to_image
from node.results.boxes import SourceBox
from node.results.sc import render_burned_in
from node.store.index import Index

log = logging.getLogger(__name__)

__all__ = ["ImageUnavailable", "ImageUnrenderable", "JobImages"]


class ImageUnavailable(LookupError):
    """The job has no picture to show (yet); the message says why."""


class ImageUnrenderable(ValueError):
    """The job's source image exists but can't be turned into a picture."""


def _boxes(job_id: int, raw: object) -> list[SourceBox]:
    boxes: list[SourceBox] = []
    for item in raw if isinstance(raw, list) else []:
        try:
            boxes.append(
                SourceBox(
                    label=str(item["label"]),
                    top=float(item["top"]),
                    left=float(item["left"]),
                    bottom=float(item["bottom"]),
                    right=float(item["right"]),
                )
            )
        except (KeyError, TypeError, ValueError) as e:
            log.warning("job %d: box %r in the record not drawn: %s", job_id, item, e)
    return boxes


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
        record = dict(job.record or {})
        image_uid = record.get("image")
        if not isinstance(image_uid, str) or not image_uid:
            raise ImageUnavailable(f"job {job_id} ({job.task}, {job.state}) records no radiograph")
        path = source_path(self.index, image_uid)
        if path is None or not path.exists():
            raise ImageUnavailable(f"job {job_id}: source image {image_uid} is no longer stored")
        try:
            radiograph = radiograph_to_image(path)
        except ImagingError as e:
            raise ImageUnrenderable(f"job {job_id}: {e}") from e
        picture = radiograph.image.crop(
            (
                radiograph.pad_left,
                radiograph.pad_top,
                radiograph.pad_left + radiograph.source_columns,
                radiograph.pad_top + radiograph.source_rows,
            )
        )
        rendered = render_burned_in(
            picture,
            _boxes(job_id, record.get("boxes")),
            impression=str(record.get("impression") or ""),
            model_label=str(record.get("model") or "unknown model"),
            is_test_model=bool(record.get("test_model", False)),
        )
        rendered.thumbnail((self.max_side, self.max_side), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        rendered.save(out, format="PNG", optimize=False)
        return out.getvalue()
