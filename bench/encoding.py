"""Encoding benchmark: what each image format costs a request to a served MedGemma.

``OpenAIEngine`` sends every image as a base64 data URL (``model.image_format``,
``model.jpeg_quality``). For three inputs, as the node prepares them:

(a) one chest radiograph: ``radiograph_to_image`` on pydicom's ``RG1_UNCR.dcm``
    (1955² after the square padding, grey in RGB);
(b) one CT volume: ``series_to_volume_input`` on a 100-slice series written by
    ``write_fast_ct_series`` (85 slices of 512², three HU windows in R, G and B; the
    fixture repeats one real slice, ``693_UNCR.dcm``, so all 85 images are alike);
(c) 125 whole-slide patches of 896² RGB: synthetic, no real slide being at hand. The
    H&E-like slide of ``fixtures/wsi.py`` (pink stroma, purple nuclei, ±6 levels of
    texture on near-white glass), stored as a scanner stores tiles (JPEG quality 90,
    4:2:2, as the fixture hands it to the dicomizer) and decoded, then cut as the node
    cuts a level: a grid of non-overlapping patches, those with at least
    ``MIN_TISSUE_FRACTION`` tissue kept. One slide yields 21 (its 20X base level is
    only 7400 × 5500), so the slide is drawn with seeds 0, 1, … (the same fragments,
    other nuclei and texture) until there are 125. Real tissue has more detail than
    this drawing, so its PNGs are larger and its JPEG errors differ.

Per format: the request payload (the data URLs' characters, summed), the time to encode
them one after another as ``request_body`` does (median of ``ROUNDS``), and the error
after decoding (mean and largest absolute difference over every pixel and channel, in
grey levels). Formats: what the node sends (PNG level 1; JPEG with 4:4:4 chroma at
quality 95 and 75), and for reference JPEG with libjpeg's default 4:2:0 chroma at the
same qualities: 95 is what the official serving container's ``cv2.imencode`` sends, 75
what the notebooks' ``PIL.Image.save`` sends.

Run: ``python -m bench.encoding``. Writes ``bench/results/encoding.json``. There is no
target: it reports.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.machine import machine
from node.imaging.wsi import MAX_PATCHES, MIN_TISSUE_FRACTION, PATCH_SIZE
from node.inference.served import image_data_url

ROUNDS = 3
CT_SLICES = 100  # more than 85: the notebook's sampling picks 85 of them
SCANNER_JPEG_QUALITY = 90  # fixtures/wsi.py JPEG_QUALITY, the dicomizer's tiles
SCANNER_JPEG_SUBSAMPLING = 1  # 4:2:2, the dicomizer's YBR_FULL_422
MB = 1_000_000


@dataclass(frozen=True)
class Format:
    name: str
    encode: Callable[[Image.Image], str]
    sent_by_node: bool


def _pil_jpeg_url(quality: int, subsampling: int) -> Callable[[Image.Image], str]:
    def encode(image: Image.Image) -> str:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality, subsampling=subsampling)
        return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")

    return encode


FORMATS = (
    Format("PNG level 1", lambda image: image_data_url(image, "png"), True),
    Format("JPEG q95 4:4:4", lambda image: image_data_url(image, "jpeg", 95), True),
    Format("JPEG q75 4:4:4", lambda image: image_data_url(image, "jpeg", 75), True),
    Format("JPEG q95 4:2:0 (container)", _pil_jpeg_url(95, 2), False),
    Format("JPEG q75 4:2:0 (notebooks)", _pil_jpeg_url(75, 2), False),
)


def radiograph() -> list[Image.Image]:
    from pydicom.data import get_testdata_file

    from node.imaging.radiograph import radiograph_to_image

    path = get_testdata_file("RG1_UNCR.dcm", download=False)
    if path is None:
        raise RuntimeError("pydicom's test file RG1_UNCR.dcm is not installed")
    return [radiograph_to_image(path).image]


def ct_volume(workdir: Path) -> list[Image.Image]:
    from fixtures.series import write_fast_ct_series
    from node.imaging.volume import series_to_volume_input

    paths = write_fast_ct_series(workdir / "ct", CT_SLICES)
    images = series_to_volume_input(paths).images
    shutil.rmtree(workdir / "ct")
    return images


def wsi_patches() -> list[Image.Image]:
    from fixtures.wsi import BASE_COLUMNS, BASE_ROWS, draw_slide, tissue_mask

    mask = tissue_mask(BASE_COLUMNS, BASE_ROWS)
    corners = [
        (left, top)
        for top in range(0, BASE_ROWS - PATCH_SIZE + 1, PATCH_SIZE)
        for left in range(0, BASE_COLUMNS - PATCH_SIZE + 1, PATCH_SIZE)
        if mask[top : top + PATCH_SIZE, left : left + PATCH_SIZE].mean() >= MIN_TISSUE_FRACTION
    ]
    patches: list[Image.Image] = []
    seed = 0
    while len(patches) < MAX_PATCHES:
        buffer = io.BytesIO()
        draw_slide(seed=seed).save(
            buffer,
            format="JPEG",
            quality=SCANNER_JPEG_QUALITY,
            subsampling=SCANNER_JPEG_SUBSAMPLING,
        )
        with Image.open(buffer) as slide:
            slide.load()
            for left, top in corners[: MAX_PATCHES - len(patches)]:
                patches.append(slide.crop((left, top, left + PATCH_SIZE, top + PATCH_SIZE)))
        seed += 1
    print(f"  WSI: {len(corners)} tissue patches a slide, {seed} slides drawn")
    return patches


def _decoded(url: str) -> np.ndarray:
    data = base64.b64decode(url.split(",", 1)[1])
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def measure(images: list[Image.Image], fmt: Format) -> dict[str, Any]:
    seconds = []
    urls: list[str] = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        urls = [fmt.encode(image) for image in images]
        seconds.append(time.perf_counter() - started)
    total_error = 0
    values = 0
    worst = 0
    for image, url in zip(images, urls, strict=True):
        source = np.asarray(image.convert("RGB"), dtype=np.int16)
        difference = np.abs(_decoded(url) - source)
        total_error += int(difference.sum(dtype=np.int64))
        values += difference.size
        worst = max(worst, int(difference.max()))
    return {
        "payload_bytes": sum(len(url) for url in urls),
        "encode_seconds_median": statistics.median(seconds),
        "encode_seconds": seconds,
        "mean_abs_error": total_error / values,
        "max_abs_error": worst,
        "sent_by_node": fmt.sent_by_node,
    }


def report(results: dict[str, Any]) -> None:
    print(f"  {'format':<28} {'payload MB':>10} {'encode s':>9} {'MAE':>6} {'max':>4}")
    for name, result in results.items():
        print(f"  {name}: {result['images']} × {result['size']}")
        for fmt_name, row in result["formats"].items():
            print(
                f"    {fmt_name:<26} {row['payload_bytes'] / MB:10.1f} "
                f"{row['encode_seconds_median']:9.2f} {row['mean_abs_error']:6.2f} "
                f"{row['max_abs_error']:4d}"
            )


def main() -> int:
    info = machine()
    print(
        f"encoding: data URL payload, encode time (median of {ROUNDS}), error after decoding; "
        f"{info['cpus']} × {info['cpu_model']}, python {info['python']}"
    )
    workdir = Path(tempfile.mkdtemp(prefix="mgn-bench-encoding-"))
    try:
        inputs = {
            "chest radiograph": radiograph(),
            "CT volume": ct_volume(workdir),
            "WSI patches": wsi_patches(),
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results: dict[str, Any] = {}
    for name, images in inputs.items():
        width, height = images[0].size
        results[name] = {
            "images": len(images),
            "size": f"{width}×{height}",
            "raw_rgb_bytes": sum(image.width * image.height * 3 for image in images),
            "formats": {fmt.name: measure(images, fmt) for fmt in FORMATS},
        }
    report(results)
    out = Path("bench/results")
    out.mkdir(parents=True, exist_ok=True)
    document = {"machine": info, "rounds": ROUNDS, "inputs": results}
    (out / "encoding.json").write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
