"""The HTML report: every PNG written is referenced and valid, every reference exists, the tables render with
the right content and the conditions in SNR order."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import polars as pl
import pytest

from ray_ser.evaluate.report import write_report
from ray_ser.evaluate.tables import confusion_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Page(HTMLParser):
    """Image sources, and tables as lists of rows of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.tables: list[list[list[str]]] = []
        self.pre: list[str] = []
        self._cell: list[str] | None = None
        self._in_pre = False

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "pre":
            self._in_pre = True

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "pre":
            self._in_pre = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._in_pre:
            self.pre.append(data)


@pytest.fixture(scope="module")
def report(tmp_path_factory, predictions, metrics, categories) -> tuple[Path, _Page]:
    out = tmp_path_factory.mktemp("report")
    path = write_report(out, predictions, metrics, confusion_table(predictions, categories),
                        {"model": "whisper-base", "layer": 3, "lr": 0.001})
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return path, page


def test_every_png_is_referenced_exists_and_is_valid(report):
    path, page = report
    out = path.parent
    written = {p.relative_to(out).as_posix() for p in out.rglob("*.png")}
    assert set(page.images) == written
    assert {"plots/uar_vs_snr.png", "plots/speaker_uar.png", "plots/pauar.png", "plots/ccc_vs_snr.png",
            "plots/confusion_clean.png", "plots/confusion_5dB.png", "plots/dims_scatter.png",
            "plots/reliability.png"} <= written
    for src in page.images:
        assert not Path(src).is_absolute()
        f = out / src
        assert f.read_bytes()[:8] == PNG_MAGIC
        img = matplotlib.image.imread(f)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
        assert img[..., :3].std() > 0.05  # not a blank canvas


def test_tables_render_with_content(report, metrics):
    _, page = report
    overall, gender, pauar, weakest, calibration, ccc, ccc_gender, ccc_weakest = page.tables
    assert calibration[0] == ["condition", "ECE (15 bins)", "Brier", "NLL", "ECE female", "ECE male"]
    ece = metrics.filter(pl.col("group_by") == "gender", pl.col("group") == "male", pl.col("condition") == "5dB",
                         pl.col("metric") == "ece").row(0, named=True)
    assert calibration[4][0] == "5dB" and calibration[4][5] == f"{ece['value']:.3f} [{ece['ci_low']:.3f}, {ece['ci_high']:.3f}]"
    assert overall[0][:2] == ["condition", "UAR (1-best)"]
    assert [r[0] for r in overall[1:]] == ["clean", "25dB", "15dB", "5dB"]  # SNR order
    row = metrics.filter(pl.col("group_by") == "all", pl.col("condition") == "15dB", pl.col("metric") == "uar",
                         pl.col("k") == 1).row(0, named=True)
    assert overall[3][1] == f"{row['value']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
    assert gender[0] == ["condition", "female UAR", "male UAR", "male − female"]
    assert len(pauar[0]) == 1 + 6 + 1 and pauar[1][-1] == "10"
    worst = (metrics.filter(pl.col("group_by") == "speaker", pl.col("metric") == "uar", pl.col("k") == 1)
             .group_by("group").agg(pl.col("value").mean()).sort("value")["group"].head(5).to_list())
    assert [r[0] for r in weakest[1:]] == worst
    assert weakest[1][1] in ("male", "female")
    assert ccc[0] == ["condition", "CCC arousal", "Pearson r arousal", "MAE arousal", "CCC valence", "Pearson r valence",
                      "MAE valence", "utterances", "speakers"]
    assert ccc_gender[0] == ["condition", "CCC arousal female", "CCC arousal male", "arousal male − female",
                             "CCC valence female", "CCC valence male", "valence male − female"]
    assert len(ccc_weakest) == 1 + 5 and ccc_weakest[0][:2] == ["speaker", "gender"]
    assert '"layer": 3' in "".join(page.pre)


def test_two_runs_without_gender_or_dimensions(tmp_path, categories):
    from ray_ser.evaluate.synthetic import synthetic_predictions
    from ray_ser.evaluate.tables import metric_table

    preds = pl.concat([synthetic_predictions(n_speakers=4, n_per_class=2, conditions=["clean"], dims=False, run=r,
                                             seed=i) for i, r in enumerate(("base", "masked/v2"))]).drop("gender")
    metrics = metric_table(preds, categories, n_boot=50)
    path = write_report(tmp_path, preds, metrics, confusion_table(preds, categories), {})
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png")}
    assert set(page.images) == written
    assert "plots/base__uar_vs_snr.png" in written and "plots/masked_v2__confusion_clean.png" in written
    assert not any("ccc" in p for p in written)
    assert "No gender information" in path.read_text(encoding="utf-8")


def test_a_dimensional_only_run_reports_ccc_alone(tmp_path):
    """No categories (a corpus with arousal and no label): CCC, Pearson r and MAE with intervals, per gender and
    speaker, the scatter and CCC vs SNR; no UAR section, no confusion matrix, metrics.parquet with mae rows."""
    from ray_ser.evaluate.synthetic import synthetic_predictions
    from ray_ser.evaluate.tables import confusion_table, metric_table

    preds = synthetic_predictions(n_speakers=4, n_per_class=2, conditions=["clean", "5dB"], dims=True, seed=3)
    preds = preds.with_columns(pl.lit(None, pl.List(pl.Float32)).alias("probs"), pl.lit(None, pl.Utf8).alias("label"),
                               pl.lit(None, pl.Int32).alias("label_index"), pl.lit(None, pl.Utf8).alias("pred"),
                               pl.lit(None, pl.List(pl.Float32)).alias("pdf"))
    metrics = metric_table(preds, [], n_boot=50)
    assert not (metrics["metric"] == "uar").any() and confusion_table(preds, []).height == 0
    mae = metrics.filter(pl.col("group_by") == "all", pl.col("metric") == "mae_arousal", pl.col("condition") == "clean")
    x = preds.filter(pl.col("condition") == "clean")
    assert mae["value"][0] == pytest.approx((x["arousal"] - x["pred_arousal"]).abs().mean(), rel=1e-5)
    assert mae["ci_low"][0] <= mae["value"][0] <= mae["ci_high"][0]
    path = write_report(tmp_path, preds, metrics, confusion_table(preds, []), {})
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png")}
    assert set(page.images) == written == {"plots/ccc_vs_snr.png", "plots/dims_scatter.png"}
    assert [t[0][0] for t in page.tables] == ["condition", "condition", "speaker"]
    assert "UAR" not in path.read_text(encoding="utf-8")
