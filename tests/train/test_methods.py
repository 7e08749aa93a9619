"""The table of methods: its rows, what is derived from it, and the one unknown-method check."""

from __future__ import annotations

import pytest

from starft_pipeline.params import block_errors
from starft_pipeline.pipelines.finetune.pipeline import create_pipeline
from starft_pipeline.train import methods
from starft_pipeline.train.finetune import FinetuneConfig
from starft_pipeline.train.methods import (
    METHOD_SPECS,
    METHODS,
    MethodSpec,
    check_method,
    check_methods,
    method_names,
    method_spec,
    teacher_method_names,
)
from starft_pipeline.train.step_losses import step_losses


def test_the_table_names_every_method_in_report_order():
    assert METHODS == method_names() == ("lp", "ft", "lp_ft", "flyp", "star", "kl")
    assert teacher_method_names() == ("star", "kl")
    assert [spec.name for spec in METHOD_SPECS if spec.fits_probe] == ["lp"]
    assert method_spec("lp_ft").head_init == "linear_probe" and method_spec("ft").head_init == "zero_shot"


def test_one_check_names_the_choices():
    assert check_method("star") == "star"
    with pytest.raises(ValueError, match="method must be one of lp, ft, lp_ft, flyp, star, kl; got 'wise'"):
        check_method("wise")
    with pytest.raises(ValueError, match=r"evaluation.models lists \['wise'\], which are not fine-tuning methods"):
        check_methods(["star", "wise"], "evaluation.models")
    assert check_methods(("ft",), "evaluation.models") == ["ft"]


def test_a_row_that_cannot_work_is_refused():
    with pytest.raises(ValueError, match="must be an identifier"):
        MethodSpec("bad name", "contrastive")
    with pytest.raises(ValueError, match="trains a head: give it a head_init"):
        MethodSpec("head", "cross_entropy")
    with pytest.raises(ValueError, match="a regulariser is added to the contrastive loss only"):
        MethodSpec("reg", "cross_entropy", head_init="zero_shot", regulariser="star")


def test_a_row_added_to_the_table_is_a_method_everywhere(monkeypatch):
    toy = MethodSpec("toy", "contrastive", regulariser="kl")
    monkeypatch.setattr(methods, "METHOD_SPECS", (*METHOD_SPECS, toy))
    config = FinetuneConfig(method="toy", teacher_mode="online")
    assert config.regularised and config.regulariser == "kl" and config.head_init is None
    assert step_losses("toy").__name__ == "contrastive_losses"
    assert {"toy.finetune", "toy.log_loss_curve"} <= {node.name for node in create_pipeline().nodes}
    assert block_errors({"toy": {"finetune": {"method": "toy"}}}, "toy.finetune") == []
    assert "toy" in teacher_method_names()
