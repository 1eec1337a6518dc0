import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from oddsparse.utils.figures import save_figure  # noqa: E402


def test_save_figure_writes_the_png_savefig_writes_and_closes_the_figure(tmp_path):
    def figure():
        fig, axis = plt.subplots(figsize=(2, 1.5))
        axis.plot([0, 1, 2], [1, 0, 2])
        return fig

    reference = tmp_path / "plain.png"
    fig = figure()
    fig.savefig(reference, dpi=80)
    plt.close(fig)
    fig = figure()
    written = save_figure(fig, tmp_path / "sub" / "saved.png", dpi=80)
    assert written == tmp_path / "sub" / "saved.png" and not plt.fignum_exists(fig.number)
    same = np.asarray(Image.open(written)), np.asarray(Image.open(reference))
    assert same[0].shape == same[1].shape == (120, 160, 4) and np.array_equal(*same)
    assert sorted(p.name for p in written.parent.iterdir()) == ["saved.png"]


def test_a_failed_figure_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "fig.png"
    path.write_bytes(b"old")
    fig, _ = plt.subplots()
    with pytest.raises(TypeError):
        save_figure(fig, path, no_such_option=1)  # savefig refuses it after opening the file
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["fig.png"]
    assert not plt.fignum_exists(fig.number)
