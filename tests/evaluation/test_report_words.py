"""What report.html says about the split and an empty localisation score, in words."""

from fracjax.evaluation.localisation import summary_table
from fracjax.evaluation.report import split_words


def test_the_report_names_the_split_the_builder_recorded(tmp_path):
    import json

    from fracjax.evaluation.report import data_line

    assert split_words({"dataset": "synthetic_fracture/quick"}, "synthetic_fracture/quick", None).startswith(
        "generated images, each made once")
    assert split_words({"dataset": "fracture_xray"}, "fracture_xray", "published").startswith(
        "the data set's published split")
    assert split_words({"dataset": "fracture_xray/grouped"}, "fracture_xray/grouped", "grouped").startswith(
        "a split drawn here")
    assert split_words({"data_folder": "x"}, "x", "given").startswith("the split given by the split folders")
    assert split_words({"data_folder": "x"}, "x", "grouped").startswith("a split drawn here")
    assert "CSV's split column" in split_words({"data_csv": "labels.csv"}, "x", "given")
    assert split_words({"dataset": "mura"}, "mura", None).startswith("a split this run did not record")
    # A report written later (fracjax evaluate) reads the kind the run's report.json kept.
    (tmp_path / "config.json").write_text(json.dumps({"train": {"data": {"dataset": "fracatlas"}}}))
    (tmp_path / "report.json").write_text(json.dumps({"data": {"split": {"kind": "grouped"}}}))
    assert "a split drawn here" in data_line(str(tmp_path)) and "fracatlas" in data_line(str(tmp_path))
    assert "published split" in data_line(str(tmp_path), "published")


def test_no_true_positive_to_score_is_said_not_printed_as_nan():
    empty = {"n": 0, "pointing_game": {"value": float("nan"), "interval": None}, "tolerance_px": 8.6,
             "energy_inside": {"value": float("nan"), "interval": None}, "chance": {"pointing_game": float("nan"),
                                                                                    "energy_inside": float("nan")}}
    _, rows = summary_table({"gradcam": empty})
    assert rows == [["gradcam", "0", "no true positives with a box to score", "-", "-", "-", "-"]]
    assert "nan" not in " ".join(rows[0])
