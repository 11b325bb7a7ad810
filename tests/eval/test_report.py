"""write_report: markdown, an HTML page and decodable PNG figures, on local disk and on S3."""

import io

import fsspec
import numpy as np
import pytest
from PIL import Image

from featup.eval.compare import CompareSettings, Comparison, Example
from featup.eval.report import markdown_table, write_report


@pytest.fixture
def comparison():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    label = np.zeros((32, 32), np.int64)
    label[8:20, 4:30] = 3
    label[0, 0] = 255
    depth = np.linspace(1, 9, 32 * 32, dtype=np.float32).reshape(32, 32)
    rows = [
        {"upsampler": "low-res", "cam_ad": 10.69, "cam_ai": 4.81, "seg_miou": 0.4065, "seg_acc": 0.6549,
         "depth_rmse": 1.25, "depth_delta1": 0.62, "upsample_s": 0.0},
        {"upsampler": "jbu", "cam_ad": 9.83, "cam_ai": 5.24, "seg_miou": 0.4341, "seg_acc": 0.6862,
         "upsample_s": 3.5},
    ]
    examples = {
        "features": Example(image, None, {"low-res": rng.normal(size=(8, 4, 4)).astype(np.float32),
                                          "jbu": rng.normal(size=(8, 32, 32)).astype(np.float32)}),
        "seg": Example(image, label, {"low-res": np.zeros((32, 32), np.int64), "jbu": label.clip(0, 3)}),
        "depth": Example(image, depth, {"low-res": depth[::-1].copy()}),
        "cam": Example(image, None, {"low-res": rng.random((32, 32)), "jbu": rng.random((32, 32))}, "class 285"),
    }
    names = ["background", "a", "b", "c"]
    return Comparison(rows, examples, CompareSettings(image_size=32), {"seg_test": 1}, names)


def test_markdown_table_formats_like_the_paper_and_marks_missing_cells():
    table = markdown_table([{"upsampler": "low-res", "cam_ad": 10.694, "seg_miou": 0.40651, "upsample_s": 0.0},
                            {"upsampler": "jbu", "seg_miou": 0.4341, "upsample_s": 2.25}])
    lines = table.strip().splitlines()
    assert lines[0] == "| upsampler | A.D. ↓ | mIoU ↑ | upsampling s |"
    assert lines[2] == "| low-res | 10.69 | 40.65 | 0.0 |"
    assert lines[3] == "| jbu | — | 43.41 | 2.2 |"


def test_report_with_pictures_renders(storage_root, comparison):
    so = storage_root.storage_options
    url = storage_root.join("report")
    written = write_report(comparison, url, title="Test report", notes="tiny fixture", storage_options=so)
    names = [w.rsplit("/", 1)[1] for w in written]
    assert names == ["index.html", "report.md", "metrics.png", "features.png", "segmentation.png", "depth.png",
                     "cam.png"]
    assert all(w.startswith(url) for w in written)

    def read(name: str) -> bytes:
        with fsspec.open(f"{url}/{name}", "rb", **(so or {})) as f:
            return f.read()

    for name in names[2:]:
        png = Image.open(io.BytesIO(read(name)))
        png.load()
        assert png.format == "PNG" and png.width > 200 and png.height > 100
    page = read("index.html").decode()
    assert all(f"src='{name}'" in page for name in names[2:])
    assert "<td>43.41</td>" in page and "Test report" in page
    markdown = read("report.md").decode()
    assert all(f"]({name})" in markdown for name in names[2:])
    assert "| jbu | 9.83 | 5.24 | 43.41 | 68.62 | — | — | 3.5 |" in markdown


def test_figures_only_for_tasks_that_ran(tmp_path, comparison):
    comparison.examples = {"cam": comparison.examples["cam"]}
    written = write_report(comparison, str(tmp_path / "only-cam"))
    assert [w.rsplit("/", 1)[1] for w in written] == ["index.html", "report.md", "metrics.png", "cam.png"]
    assert (tmp_path / "only-cam" / "cam.png").stat().st_size > 0
