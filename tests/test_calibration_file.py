"""calibration.json (issue 35, item 6): written with a checksum, read back checked against it, and
range-checked either way (files from before checksums included): a temperature of -1 would
invert every probability, 0 divide by zero, NaN print "nan not fractured"."""

import json
import math

import pytest

from fracjax.checkpoint import CALIBRATION_FILE, CheckpointCorruptError, read_calibration, write_calibration

GOOD = {"temperature": 1.3, "operating_points": {"youden": 0.42, "sensitivity_0.95": 0.2}, "auroc": float("nan"),
        "auroc_interval": [0.7, 0.9]}


def _rewrite(folder, change):
    path = folder / CALIBRATION_FILE
    saved = json.loads(path.read_text())
    change(saved)
    path.write_text(json.dumps(saved))


def test_written_with_a_checksum_and_read_back_whole(tmp_path):
    write_calibration(str(tmp_path), GOOD)
    assert "checksum" in json.loads((tmp_path / CALIBRATION_FILE).read_text())
    read = read_calibration(str(tmp_path))
    assert read["temperature"] == 1.3 and read["operating_points"] == GOOD["operating_points"]
    assert math.isnan(read["auroc"]) and "checksum" not in read


def test_an_edit_breaks_the_checksum(tmp_path):
    write_calibration(str(tmp_path), GOOD)
    _rewrite(tmp_path, lambda c: c.update(temperature=0.5))  # in range, but not what was written
    with pytest.raises(CheckpointCorruptError, match="does not match the checksum written with it"):
        read_calibration(str(tmp_path))


@pytest.mark.parametrize("change, message", [
    ({"temperature": -1}, "temperature -1 is not a finite number above 0"),
    ({"temperature": 0}, "temperature 0 is not a finite number above 0"),
    ({"temperature": float("nan")}, "temperature nan is not a finite number above 0"),
    ({"temperature": "1.3"}, "temperature '1.3' is not a finite number above 0"),
    ({"operating_points": {"youden": 7.5}}, "operating point 'youden' 7.5 is not a probability threshold"),
    ({"operating_points": [0.4]}, "operating_points is not a mapping"),
])
def test_values_out_of_range_are_refused_with_or_without_a_checksum(tmp_path, change, message):
    write_calibration(str(tmp_path), GOOD)
    _rewrite(tmp_path, lambda c: (c.update(change), c.pop("checksum")))  # an old file, or the checksum removed
    with pytest.raises(CheckpointCorruptError, match=message):
        read_calibration(str(tmp_path))
    with pytest.raises(CheckpointCorruptError, match=message):  # and never written in the first place
        write_calibration(str(tmp_path / "new"), {**GOOD, **change})
    assert not (tmp_path / "new").exists()
