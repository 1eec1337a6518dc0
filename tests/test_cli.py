"""The console script's handling of bad input: one line naming the file, exit status 2."""
import pytest
import torch

from oddsparse.cli import main
from oddsparse.utils.checkpoint import CheckpointError


def test_bad_input_ends_the_command_with_one_line_and_status_2(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ODDSPARSE_TRACEBACK", raising=False)
    text_file = tmp_path / "notes.pt"
    text_file.write_text("not a checkpoint")
    no_model = tmp_path / "no_model.pt"
    torch.save({"config": {}}, no_model)
    cases = [(["eval", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "e")],
              f"oddsparse eval: error: checkpoint not found: {tmp_path / 'missing.pt'}"),
             (["eval", "--checkpoint", str(text_file), "--out", str(tmp_path / "e")],
              f"oddsparse eval: error: {text_file}: not a checkpoint (not a torch.save zip archive"),
             (["predict", str(tmp_path), "--checkpoint", str(no_model), "--out", str(tmp_path / "p")],
              f"oddsparse predict: error: {no_model}: field 'scene_kwargs' missing"),
             (["show", str(tmp_path / "no-scene"), "--out", str(tmp_path / "sheet.png")],
              f"oddsparse show: error: {tmp_path / 'no-scene'}")]
    for argv, start in cases:
        assert main(argv) == 2, argv
        captured = capsys.readouterr()
        assert captured.err.startswith(start), captured.err
        assert len(captured.err.strip().splitlines()) == 1 and "Traceback" not in captured.err
    monkeypatch.setenv("ODDSPARSE_TRACEBACK", "1")  # for debugging: the exception itself
    with pytest.raises(CheckpointError, match="not a torch.save zip archive"):
        main(cases[1][0])


def test_a_recipe_run_as_a_script_reports_bad_input_in_one_line(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "train_toysad.py"
    done = subprocess.run([sys.executable, str(recipe), "--preset", "smoke", "--data", str(tmp_path / "nowhere"),
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != "ODDSPARSE_TRACEBACK"})
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr  # (a library's import warning may come before the line)
    assert done.stderr.strip().splitlines()[-1] == \
        f"train_toysad.py: error: dataset root {tmp_path / 'nowhere'} is not a folder"


def test_other_os_errors_keep_their_traceback(capsys, monkeypatch):
    """Only what bad input raises ends in one line: an OSError that no file or folder of the input explains (a
    fault of the run: too many open files, a broken pipe) propagates with its traceback."""
    import errno

    from oddsparse.cli import report_bad_input
    from oddsparse.utils.checkpoint import WriteError

    monkeypatch.delenv("ODDSPARSE_TRACEBACK", raising=False)

    def fail(error):
        def run():
            raise error
        return run

    with pytest.raises(OSError, match="Too many open files"):
        report_bad_input("tool", fail(OSError(errno.EMFILE, "Too many open files")))
    with pytest.raises(BrokenPipeError):
        report_bad_input("tool", fail(BrokenPipeError(errno.EPIPE, "Broken pipe")))
    for error, line in ((WriteError("out.pt: writing failed after 1.0 MiB"), "out.pt: writing failed after 1.0 MiB"),
                        (PermissionError(errno.EACCES, "Permission denied", "runs/x"),
                         "[Errno 13] Permission denied: 'runs/x'")):
        assert report_bad_input("tool", fail(error)) == 2
        assert capsys.readouterr().err == f"tool: error: {line}\n"


def test_generate_passes_every_option_to_generate_dataset(tmp_path, monkeypatch, capsys):
    """`oddsparse generate` hands each option to generate_dataset under its own name (the options are read by
    generate_dataset's tests; here: that the command line reaches it)."""
    import oddsparse.data.synth as synth

    seen = {}

    def recording(out, family, scenes, seed, **kwargs):
        seen.update(out=out, family=family, scenes=scenes, seed=seed, **kwargs)
        return []

    monkeypatch.setattr(synth, "generate_dataset", recording)
    argv = ["generate", "--out", str(tmp_path / "d"), "--family", "toys", "--scenes", "7", "--seed", "5",
            "--objects", "4-9", "--views", "11", "--size", "96", "--workers", "3", "--min-anomaly-pixels", "8",
            "--background", "environment", "--categories", "+banana", "--quiet"]
    assert main(argv) == 0
    assert seen == dict(out=tmp_path / "d", family="toys", scenes=7, seed=5, objects=(4, 9), views=11, size=96,
                        workers=3, progress=False, min_anomaly_pixels=8, background="environment",
                        categories="+banana")
    assert main(argv[:9]) == 0  # the defaults
    assert (seen["objects"], seen["views"], seen["size"], seen["workers"], seen["progress"],
            seen["min_anomaly_pixels"], seen["background"], seen["categories"]) == \
        ((3, 12), 20, 256, 1, True, 0, "gradient", None)
