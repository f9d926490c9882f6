"""The decorrelation study's guards (bench/decorrelation_study.py): one training precision per setting."""

import pytest
from bench.decorrelation_study import one_precision


def test_a_setting_trains_its_cells_in_one_precision():
    """Cells stored before precision was recorded count as bf16 (the only precision then); a cell that would train in
    another precision than the setting's is stopped with a line naming both, other settings are not affected."""
    results = {"cells": {"tqa/0/none": {}, "tqa/0/cka-delta_w-a0.1": {"precision": "bf16"},
                         "builtin/0/none": {"precision": "fp32"}}}
    one_precision(results, "tqa", "bf16")
    one_precision(results, "builtin", "fp32")
    one_precision(results, "hh", "fp32")  # no cells yet: any precision starts it
    with pytest.raises(SystemExit, match=r"tqa's cells trained in bf16, this machine resolves training.precision auto "
                                         r"to fp32"):
        one_precision(results, "tqa", "fp32")
    results["cells"]["builtin/1/none"] = {"precision": "bf16"}
    with pytest.raises(SystemExit, match=r"builtin's cells trained in bf16, fp32"):
        one_precision(results, "builtin", "fp32")
