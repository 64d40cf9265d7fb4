"""Config layering: a recipe that continues another (`base:`) states only what differs."""

from __future__ import annotations

import pytest

from pipeline.config import load_detect_config
from pipeline.errors import ConfigError
from pipeline.training.config import load_train_config


def test_the_shipped_continuation_inherits_what_it_does_not_set():
    base, more = load_train_config("ombria"), load_train_config("ombria_more")
    assert more.augment == base.augment and more.data == base.data and more.detect == base.detect
    assert more.optim.lr == 3e-4 and more.optim.weight_decay == base.optim.weight_decay
    assert [s.name for s in more.stages] == ["o2sp_more"]  # lists replace, never concatenate


def test_a_base_by_relative_path_layers_mappings_and_overrides_win(tmp_path):
    (tmp_path / "parent.yaml").write_text("tiling: {tile: 512, overlap: 64}\n")
    (tmp_path / "child.yaml").write_text("base: parent.yaml\ntiling: {tile: 256}\n")
    config = load_detect_config(tmp_path / "child.yaml", {"tiling.overlap": 32})
    assert (config.tiling.tile, config.tiling.overlap) == (256, 32)


def test_a_base_cycle_is_refused_naming_the_files(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match=r"a\.yaml: base: forms a cycle .*b\.yaml"):
        load_detect_config(tmp_path / "a.yaml")


def test_a_missing_base_names_the_file_that_asked_for_it(tmp_path):
    (tmp_path / "child.yaml").write_text("base: nowhere\n")
    with pytest.raises(ConfigError, match=r"child\.yaml: base: 'nowhere' not found"):
        load_detect_config(tmp_path / "child.yaml")
