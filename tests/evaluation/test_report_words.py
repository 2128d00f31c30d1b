"""What report.html says about the split and an empty localisation score, in words."""

from fracjax.evaluation.localisation import summary_table
from fracjax.evaluation.report import split_words


def test_the_report_names_the_split_the_run_used(tmp_path):
    assert split_words({"dataset": "synthetic_fracture/quick"}, "synthetic_fracture/quick").startswith(
        "generated images, each made once")
    assert split_words({"dataset": "fracture_xray"}, "fracture_xray").startswith("the data set's published split")
    assert split_words({"dataset": "fracture_xray/grouped"}, "fracture_xray/grouped").startswith("a split drawn here")
    (tmp_path / "given" / "train" / "fractured").mkdir(parents=True)
    (tmp_path / "classes" / "fractured").mkdir(parents=True)
    assert split_words({"data_folder": str(tmp_path / "given")}, "x").startswith("the split given by the split folders")
    assert split_words({"data_folder": str(tmp_path / "classes")}, "x").startswith("a split drawn here")
    (tmp_path / "labels.csv").write_text("path,label,split\na.png,1,train\n")
    assert "CSV's split column" in split_words({"data_csv": str(tmp_path / "labels.csv")}, "x")


def test_no_true_positive_to_score_is_said_not_printed_as_nan():
    empty = {"n": 0, "pointing_game": {"value": float("nan"), "interval": None}, "tolerance_px": 8.6,
             "energy_inside": {"value": float("nan"), "interval": None}, "chance": {"pointing_game": float("nan"),
                                                                                    "energy_inside": float("nan")}}
    _, rows = summary_table({"gradcam": empty})
    assert rows == [["gradcam", "0", "no true positives with a box to score", "-", "-", "-", "-"]]
    assert "nan" not in " ".join(rows[0])
