"""The `m2cd` console script as rio/gdal/git users expect it (issue 13 point 1), in subprocesses."""

from __future__ import annotations

import json

import pytest

from tests.reliability.support import run_cli


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["detect", "a.tif", "b.tif"], "Missing option '--out'"),
        (["detect", "a.tif", "b.tif", "--out", "o", "--tile", "abc"], "'--tile'"),
        (["detect", "a.tif", "b.tif", "extra", "--out", "o"], "unexpected extra argument"),
        (["detect", "a.tif", "b.tif", "--out", "o", "--frobnicate"], "No such option"),
    ],
    ids=["missing_out", "tile_not_int", "extra_argument", "unknown_option"],
)
def test_usage_errors_print_one_line_and_the_usage_hint_and_exit_2(args, needle):
    res = run_cli(args, timeout=120)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert len(lines) == 2, lines
    assert lines[0].startswith("error: ") and needle in lines[0]
    assert lines[1].startswith("Usage: m2cd detect") and "m2cd detect --help" in lines[1]


def test_version_is_the_distribution_version():
    from pipeline.cli.root import version

    res = run_cli(["--version"], timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"m2cd {version()}"
    assert version()[0].isdigit()


@pytest.mark.parametrize("command", [["train"], ["detect"], ["synth"]])
def test_every_help_shows_its_defaults(command):
    res = run_cli([*command, "--help"], timeout=120)
    assert res.returncode == 0, res.stderr
    text = " ".join(res.stdout.split())  # help is wrapped to the terminal width
    if command == ["train"]:  # the help's figures are the default recipe's, not a stale copy
        import yaml

        from pipeline.training.config import TRAIN_CONFIG_DIR

        recipe = yaml.safe_load((TRAIN_CONFIG_DIR / "finetune.yaml").read_text())
        steps, batch, tile = (
            recipe["stages"][-1]["steps"],
            recipe["data"]["batch_size"],
            recipe["data"]["tile"],
        )
        for default in (f"finetune: {steps}", f"finetune: {batch}", f"finetune: {tile}", "cuda:N"):
            assert default in text, default
    assert "[default:" in text


def test_detect_json_prints_the_run_summary_on_stdout(tmp_path):
    from tests.reliability.support import detect_args, write_pair

    pair = write_pair(tmp_path / "in", 64, 64)
    res = run_cli(["-v", *detect_args(pair, tmp_path / "out"), "--json"])
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)  # the whole of stdout is one JSON object
    assert summary["out"] == str(tmp_path / "out")
    assert summary["blocks"] >= 1 and "change_prob" in json.dumps(summary["products"])
    assert "plan " in res.stderr  # the plan went to stderr


def test_one_plain_log_handler_and_warnings_as_one_line(capsys):
    import logging
    import warnings

    from pipeline.cli.root import configure_logging, reset_logging

    configure_logging(0)
    configure_logging(1)  # a second call replaces ours, never stacks another
    ours = [h for h in logging.getLogger().handlers if h.get_name() == "m2cd-cli"]
    assert len(ours) == 1
    logging.getLogger("pipeline.test").info("hello %s", "there")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        from pipeline.cli.root import _show_warning

        warnings.showwarning = _show_warning
        warnings.warn("SAR units guessed as dB", UserWarning, stacklevel=1)
    err = capsys.readouterr().err.splitlines()
    assert "hello there" in err
    assert "warning: SAR units guessed as dB" in err
    assert not any("warnings.warn" in line for line in err)  # no source line
    configure_logging(-1)
    assert logging.getLogger("pipeline").level == logging.WARNING
    reset_logging()
    assert not [h for h in logging.getLogger().handlers if h.get_name() == "m2cd-cli"]


def test_device_fields_take_cuda_n():
    from pipeline.config import load_detect_config
    from pipeline.errors import ConfigError
    from pipeline.training.config import load_train_config

    assert (
        load_detect_config("default", {"inference.device": "cuda:1"}).inference.device == "cuda:1"
    )
    scene = {"optical": "o.tif", "sar": "s.tif", "label": "l.tif", "train": [{"window": "0:8,0:8"}]}
    train = {"data": {"scenes": [scene]}, "device": "cuda:2"}
    assert load_train_config(train, None).device == "cuda:2"
    with pytest.raises(ConfigError, match="device"):
        load_train_config({**train, "device": "gpu"}, None)
    with pytest.raises(ConfigError, match="inference.device"):
        load_detect_config("default", {"inference.device": "cuda:x"})
