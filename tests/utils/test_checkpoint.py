import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from oddsparse.utils.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state


def test_atomic_save_and_weights_only_load(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"model": {"w": torch.arange(3.0)}, "config": {"lr": 0.1, "name": "x"}, "step": 7})
    loaded = load_checkpoint(path)
    assert loaded["step"] == 7 and loaded["config"]["name"] == "x"
    assert torch.equal(loaded["model"]["w"], torch.arange(3.0))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary left behind


def test_mmap_load_gives_the_same_fields_and_still_refuses_code(tmp_path):
    path = tmp_path / "ckpt.pt"
    weights = torch.randn(64, 64)
    save_checkpoint(path, {"model": {"w": weights}, "scene_kwargs": {"voxel_size": 0.02}})
    mapped = load_checkpoint(path, mmap=True)
    assert mapped["scene_kwargs"] == {"voxel_size": 0.02} and torch.equal(mapped["model"]["w"], weights)

    class Payload:
        def __reduce__(self):
            return (os.getcwd, ())

    torch.save({"x": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="evil.pt"):
        load_checkpoint(tmp_path / "evil.pt", mmap=True)


def test_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.pt"

    class Payload:  # an arbitrary class: a weights-only load must refuse to rebuild it
        def __reduce__(self):
            return (os.getcwd, ())

    torch.save({"x": Payload()}, path)
    with pytest.raises(ValueError, match="evil.pt"):
        load_checkpoint(path)


def test_missing_checkpoint_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")


def test_rng_state_round_trip(tmp_path):
    torch.manual_seed(3); np.random.seed(3); random.seed(3)
    save_checkpoint(tmp_path / "rng.pt", {"rng": rng_state()})
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]
    # normals are drawn in pairs: the second of a pair waits in the state, and a restore must keep it
    np.random.randn(), random.gauss(0, 1)  # each leaves its pair's second normal cached
    save_checkpoint(tmp_path / "gauss.pt", {"rng": rng_state()})
    expected = (np.random.randn(2), random.gauss(0, 1), random.gauss(0, 1))
    set_rng_state(load_checkpoint(tmp_path / "gauss.pt")["rng"])
    assert np.array_equal(np.random.randn(2), expected[0])
    assert (random.gauss(0, 1), random.gauss(0, 1)) == expected[1:]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writes_get_the_mode_open_gives(tmp_path, umask):
    # mkstemp creates 0o600 files; an atomic write must end with the mode a plain open() gives
    from oddsparse.utils.checkpoint import atomic_write_bytes

    old = os.umask(umask)
    try:
        reference = tmp_path / "plain.txt"
        reference.write_bytes(b"x")
        atomic_write_bytes(tmp_path / "report.json", b"{}")
        save_checkpoint(tmp_path / "ckpt.pt", {"a": torch.zeros(2)})
    finally:
        os.umask(old)
    want = reference.stat().st_mode & 0o777
    assert want == 0o666 & ~umask
    assert (tmp_path / "report.json").stat().st_mode & 0o777 == want
    assert (tmp_path / "ckpt.pt").stat().st_mode & 0o777 == want


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="no /proc/self/status to read the umask from")
def test_the_file_mode_is_read_without_setting_the_umask(monkeypatch):
    """Setting the umask to read it leaves a moment in which another thread's new files get mode 0o666."""
    from oddsparse.utils import checkpoint

    old = os.umask(0o027)
    try:
        with monkeypatch.context() as patch:
            patch.setattr(os, "umask", lambda mask: pytest.fail(f"os.umask({mask:#o}) called"))
            mode = checkpoint.default_file_mode()
    finally:
        os.umask(old)
    assert mode == 0o640


def test_the_file_mode_without_proc_sets_and_restores_the_umask(monkeypatch):
    from oddsparse.utils import checkpoint

    monkeypatch.setattr(checkpoint, "_umask_from_proc", lambda: None)  # as on macOS
    old = os.umask(0o007)
    try:
        assert checkpoint.default_file_mode() == 0o660
        assert os.umask(0o007) == 0o007  # put back
    finally:
        os.umask(old)


def test_a_failed_checkpoint_write_names_the_file_and_keeps_the_old_one(tmp_path):
    """A real write failure: in a child process the file size limit (RLIMIT_FSIZE, 1 MiB) makes torch.save's
    writes fail past 1 MiB, as a full disk does (torch raises 'unexpected pos' / 'file write failed')."""
    script = textwrap.dedent(f"""
        import resource, signal, torch
        from pathlib import Path
        from oddsparse.utils.checkpoint import WriteError, save_checkpoint
        path = Path({str(tmp_path / "ckpt.pt")!r})
        save_checkpoint(path, {{"w": torch.ones(8)}})  # a finished checkpoint, small
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        try:
            save_checkpoint(path, {{"w": torch.zeros(2**20)}})  # 4 MiB
        except WriteError as error:
            print("ERROR", error)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    message = done.stdout.strip()
    assert message.startswith(f"ERROR {tmp_path / 'ckpt.pt'}: writing failed after 1.0 MiB"), message
    assert "MiB free on its disk" in message
    assert torch.equal(load_checkpoint(tmp_path / "ckpt.pt")["w"], torch.ones(8))  # the old checkpoint stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]  # no temporary file left


def test_state_fingerprints_tell_apart_states_whose_bytes_ran_together_or_whose_repr_is_abridged():
    """Equal states hash equal; states that differ anywhere hash differently, also where the old hash's
    concatenated bytes ran together (name "a" + "12" against "a1" + "2"; a tensor's bytes against a name) or a
    nested tensor's repr was abridged (one of 2000 zeros set to 1)."""
    from oddsparse.utils.checkpoint import state_fingerprint

    a = {"w": torch.arange(6.0).reshape(2, 3), "state": {"m": torch.zeros(2000), "step": 3}, "names": ["x", "y"]}
    same = {"names": ["x", "y"], "state": {"step": 3, "m": torch.zeros(2000)}, "w": torch.arange(6.0).reshape(2, 3)}
    assert state_fingerprint(a) == state_fingerprint(same)
    changed = {"w": a["w"], "state": {"m": torch.zeros(2000), "step": 3}, "names": ["x", "y"]}
    changed["state"]["m"][1234] = 1.0
    pairs = [(a, changed), ({"a": 12}, {"a1": 2}),
             ({"x": torch.tensor([875770417], dtype=torch.int32)}, {"xtorch.int32(1,)": 1234}),
             ({"w": torch.zeros(2, 3)}, {"w": torch.zeros(3, 2)}), ({"w": torch.zeros(2)}, {"w": torch.zeros(2).double()}),
             ({"l": [1, 2]}, {"l": (1, 2)})]
    for left, right in pairs:
        assert state_fingerprint(left) != state_fingerprint(right), (left, right)
    assert state_fingerprint(a, {"split": "test"}) != state_fingerprint(a, {"split": "train"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_a_device_this_machine_lacks_is_named_as_the_option_not_blamed_on_the_file(tmp_path):
    from oddsparse.utils.errors import InputError

    save_checkpoint(tmp_path / "ok.pt", {"w": torch.zeros(2)})
    for device, message in (("cuda", "CUDA is not available"), ("bogus", "is not a torch device")):
        with pytest.raises(InputError, match=message):
            load_checkpoint(tmp_path / "ok.pt", map_location=device)
    assert torch.equal(load_checkpoint(tmp_path / "ok.pt", map_location="cpu")["w"], torch.zeros(2))


def test_a_write_that_cannot_start_names_the_file_asked_for(tmp_path):
    from oddsparse.utils.checkpoint import WriteError, atomic_write_bytes

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(WriteError, match=f"{blocker / 'out.png'}: cannot be written"):
        atomic_write_bytes(blocker / "out.png", b"x")
