"""write_report: markdown, an HTML page and decodable PNG figures, on local disk and on S3."""

import base64
import io
import re

import fsspec
import numpy as np
import pytest
from PIL import Image

from featup.eval.compare import METRICS, CompareSettings, Comparison, Example
from featup.eval.report import (
    legend_classes,
    markdown_table,
    report_markdown,
    table_records,
    winner_sentences,
    write_report,
)


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
        # Class 2 appears only in a prediction: the legend must still name it.
        "seg": Example(image, label, {"low-res": np.full((32, 32), 2, np.int64), "jbu": label.clip(0, 3)}),
        "depth": Example(image, depth, {"low-res": depth[::-1].copy()}),
        "cam": Example(image, None, {"low-res": rng.random((32, 32)), "jbu": rng.random((32, 32))},
                       "class (285), p = 0.50"),
    }
    names = ["background", "a", "b", "c"]
    counts = {"cam": 9, "seg_train": 3, "seg_test": 1, "depth_train": 2, "depth_test": 1}
    return Comparison(rows, examples, CompareSettings(image_size=32), counts, names)


def test_markdown_table_formats_like_the_paper_and_marks_missing_cells():
    table = markdown_table([{"upsampler": "low-res", "cam_ad": 10.694, "seg_miou": 0.40651, "upsample_s": 0.0},
                            {"upsampler": "jbu", "seg_miou": 0.4341, "upsample_s": 2.25}])
    lines = table.strip().splitlines()
    assert lines[0] == "| upsampler | A.D. % ↓ | mIoU % ↑ | upsampling s, total |"
    assert lines[2] == "| low-res | 10.69 | 40.65 | 0.0 |"
    assert lines[3] == "| jbu | — | 43.41 | 2.2 |"


def test_time_per_image_counts_the_images_each_upsampler_upsampled():
    rows = [{"upsampler": "low-res", "seg_miou": 0.4, "cam_ad": 10.0, "upsample_s": 0.0},
            {"upsampler": "jbu", "seg_miou": 0.5, "cam_ad": 9.0, "upsample_s": 3.5}]
    counts = {"seg_train": 3, "seg_test": 2, "cam": 2}
    own = markdown_table(rows, counts).strip().splitlines()
    assert own[0].endswith("| upsampling s, total | s / image |")
    assert own[3] == "| jbu | 9.00 | 50.00 | 3.5 | 0.500 |"  # 3 train + 2 test + 2 CAM images
    assert own[2].endswith("| 0.0 | — |")  # low-res upsamples nothing
    # One probe trained on low-res features serves every upsampler: only test images are upsampled.
    shared = markdown_table(rows, counts, probe_protocol="lowres").strip().splitlines()
    assert shared[3] == "| jbu | 9.00 | 50.00 | 3.5 | 0.875 |"


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
    # the page carries its figures (the same PNG bytes), so it shows whole from any one URL it is published at
    inline = [base64.b64decode(src) for src in re.findall(r"src='data:image/png;base64,([^']+)'", page)]
    assert inline == [read(name) for name in names[2:]]
    if url.startswith("s3://"):  # served with its media type, so a browser shows the page instead of saving it
        fs, path = fsspec.core.url_to_fs(f"{url}/index.html", **so)
        assert fs.info(path)["ContentType"] == "text/html; charset=utf-8"
    assert "<td class='best'>43.41</td>" in page and "Test report" in page
    markdown = read("report.md").decode()
    assert all(f"]({name})" in markdown for name in names[2:])
    # 3 seg train + 1 seg test + 9 CAM images upsampled by jbu (no depth row): 3.5 s / 13.
    assert "| jbu | 9.83 | 5.24 | 43.41 | 68.62 | — | — | 3.5 | 0.269 |" in markdown


def test_figures_only_for_tasks_that_ran(tmp_path, comparison):
    comparison.examples = {"cam": comparison.examples["cam"]}
    written = write_report(comparison, str(tmp_path / "only-cam"))
    assert [w.rsplit("/", 1)[1] for w in written] == ["index.html", "report.md", "metrics.png", "cam.png"]
    assert (tmp_path / "only-cam" / "cam.png").stat().st_size > 0


def test_every_metric_is_defined_with_its_unit_and_direction(comparison):
    markdown = report_markdown(comparison)
    definitions = markdown.split("## What the numbers mean")[1].split("\n## ")[0]
    units = {"cam_ad": "%", "cam_ai": "%", "seg_miou": "%", "seg_acc": "%", "depth_rmse": "depth maps' units",
             "depth_delta1": "%"}
    for key, header, higher in METRICS:
        short = header.split(" ")[0]
        line = next(li for li in definitions.splitlines() if li.startswith(f"- **{short}**"))
        assert units[key] in line
        assert ("higher is better" if higher else "lower is better") in line
    assert "not per image" in definitions  # the time column says it is a total
    # The sample sizes are turned into what they mean: 9 CAM images, so A.I. moves in steps of 11.1 points.
    assert "A.I. moves in steps of 11.1 points" in markdown
    assert "trained on 3 images and scored on 1 test image" in markdown
    assert "Probe protocol 'own': each upsampler gets its own linear probe" in markdown


def test_winner_sentences_name_the_best_of_each_column(comparison):
    sentences = winner_sentences(comparison.rows, comparison.counts)
    assert sentences == [
        # With 9 CAM images a single image can move A.D. by up to 11.1 points: a 0.86-point lead is flagged.
        "A.D.: jbu is best (lowest) at 9.83 %, ahead of low-res at 10.69 % — less than one image can change.",
        "A.I.: jbu is best (highest) at 5.24 %, ahead of low-res at 4.81 %.",
        "mIoU: jbu is best (highest) at 43.41 %, ahead of low-res at 40.65 %.",
        "Acc.: jbu is best (highest) at 68.62 %, ahead of low-res at 65.49 %.",
    ]  # RMSE and δ<1.25 were scored for low-res only: nothing to compare
    markdown = report_markdown(comparison)
    assert "Of the 4 columns where the upsamplers differ, jbu is best in 4 (A.D., A.I., mIoU, Acc.)." in markdown


def test_winner_sentences_report_ties_and_one_image_differences():
    rows = [{"upsampler": "lowres", "cam_ai": 100 / 3, "depth_rmse": 2.0, "upsample_s": 0.0},
            {"upsampler": "bilinear", "cam_ai": 200 / 9, "depth_rmse": 1.5, "upsample_s": 0.7},
            {"upsampler": "jbu", "cam_ai": 200 / 9, "depth_rmse": 1.5, "upsample_s": 14.7}]
    assert winner_sentences(rows, {"cam": 9}) == [
        ("A.I.: lowres is best (highest) at 33.33 % (3 of 9 images), ahead of bilinear at 22.22 % (2 of 9 images)"
         " — a difference of one image."),
        "RMSE: bilinear and jbu tie for the lowest value, 1.500; next is lowres at 2.000.",
    ]


def test_cam_caption_names_the_imagenet_class(tmp_path, comparison):
    write_report(comparison, str(tmp_path / "r"))
    for name in ("report.md", "index.html"):
        assert "Egyptian cat (285), p = 0.50" in (tmp_path / "r" / name).read_text()
    # A classifier with its own classes is named by the caller.
    names = [f"kind {i}" for i in range(300)]
    assert "kind 285 (285), p = 0.50" in report_markdown(comparison, cam_class_names=names)


def test_legend_lists_classes_found_only_in_predictions(comparison):
    assert legend_classes(comparison.examples["seg"]) == [0, 2, 3, 255]
    caption = report_markdown(comparison).split("## Segmentation probe")[1].split("\n## ")[0]
    assert "background (0), b (2), c (3), unlabelled (not scored)" in caption


def test_title_names_the_backbone(tmp_path, comparison):
    write_report(comparison, str(tmp_path / "r"), title="featup demo", backbone="vit_small_patch16_224")
    assert "<h1>featup demo — vit_small_patch16_224</h1>" in (tmp_path / "r" / "index.html").read_text()
    markdown = (tmp_path / "r" / "report.md").read_text()
    assert markdown.startswith("# featup demo — vit_small_patch16_224\n")
    assert "Backbone vit_small_patch16_224: images are resized to 32×32 px" in markdown
    # A title that already names it is left alone.
    assert report_markdown(comparison, title="resnet50 run", backbone="resnet50").startswith("# resnet50 run\n")


def test_table_records_use_the_same_scale_as_the_table(comparison):
    records = table_records(comparison.rows, comparison.counts)
    assert records[1] == {"upsampler": "jbu", "A.D. % ↓": 9.83, "A.I. % ↑": 5.24, "mIoU % ↑": 43.41,
                          "Acc. % ↑": 68.62, "RMSE ↓": None, "δ<1.25 % ↑": None, "upsampling s, total": 3.5,
                          "s / image": 0.269}
    assert records[0]["δ<1.25 % ↑"] == 62.0 and records[0]["s / image"] is None


def test_a_real_cam_caption_gets_its_imagenet_name(tmp_path, cam_backbone):
    from featup.data.offline import photo_crops
    from featup.eval.compare import compare_upsamplers
    from featup.eval.imagenet_classes import imagenet_class_name

    photo = list(photo_crops(1, size=96, names=["chelsea"]))  # a tabby cat
    result = compare_upsamplers(cam_backbone, {"lowres": None}, cam_images=photo,
                                settings=CompareSettings(image_size=96), progress=False)
    index = int(result.examples["cam"].caption.split("(")[1].split(")")[0])
    named = f"{imagenet_class_name(index)} ({index}), p = "
    write_report(result, str(tmp_path / "r"))
    assert named in (tmp_path / "r" / "report.md").read_text()
    assert "cat" in imagenet_class_name(index)


def test_figures_fill_their_width_and_scale_down_with_the_page(tmp_path, comparison):
    write_report(comparison, str(tmp_path / "r"))
    page = (tmp_path / "r" / "index.html").read_text()
    assert "max-width:100%" in page and "height:auto" in page and "name='viewport'" in page
    for name in ("metrics.png", "features.png", "segmentation.png", "depth.png", "cam.png"):
        pixels = np.asarray(Image.open(tmp_path / "r" / name).convert("L"))
        ink_rows, ink_cols = np.where(pixels < 245)
        # Cropped to what is drawn: no blank margin wider than a few pixels on any side.
        assert ink_rows.min() < 16 and ink_cols.min() < 16, name
        assert pixels.shape[0] - ink_rows.max() < 16 and pixels.shape[1] - ink_cols.max() < 16, name


def test_markdown_can_link_figures_where_they_were_published(comparison):
    markdown = report_markdown(comparison, figure_base="https://bucket.example/report/")
    assert "![Metrics](https://bucket.example/report/metrics.png)" in markdown
    assert "![Class activation maps](https://bucket.example/report/cam.png)" in markdown
    inline = report_markdown(comparison, figure_base="https://bucket.example/report/",
                             figure_urls={"cam.png": "data:image/png;base64,AAAA"})
    assert "![Class activation maps](data:image/png;base64,AAAA)" in inline
    assert "![Metrics](https://bucket.example/report/metrics.png)" in inline
