"""`nntrain predict` on hostile and unusual image files: image bombs (a 128-byte PNG of 50000x1 pixels, a
400000x1 one, 100 megapixels of one colour) are refused from their header, before anything is decoded,
in bounded memory; a 16-bit PNG is scaled to 8 bits, not clipped; of an animated GIF the first frame is
used, and the output says so."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_config, write_config
from nntrain.tools.predict import predict_files
from test_checkpoints import invoke

pytestmark = pytest.mark.reliability

MEMORY_LIMIT = 3 << 30    # address space of the predict process: the old padding needed 2.5 GB of it


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    from nntrain.data import load_dataset
    from nntrain.training.run_folder import load_run

    tmp = tmp_path_factory.mktemp("predict-files")
    cfg_path = write_config(tmp / "c.yaml", tiny_config(train={"epochs": 1, "batch_size": 64}))
    code, out = invoke("train", cfg_path, "--run-dir", tmp / "run", "--no-progress")
    assert code == 0, out
    digits = load_dataset("mnist-mini").test_images[:4, 0]
    return {"tmp": tmp, "run": tmp / "run", "loaded": load_run(tmp / "run"), "digits": digits}


# The child's own peak: VmHWM belongs to the program's address space, made at exec. (ru_maxrss would
# also count the pytest process it was forked from, kept across exec by Linux.)
PEAK = ("import atexit, re, sys\n"
        "hwm = lambda: re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
        "atexit.register(lambda: sys.stderr.write(f'\\nPEAK_RSS {hwm()}\\n'))\n"
        "from nntrain.cli import main\n"
        "sys.argv = ['nntrain', *sys.argv[1:]]\n"
        "main()\n")


def predict_process(run: Path, image: Path) -> tuple[int, str, int]:
    """`nntrain predict` in a child limited to MEMORY_LIMIT of address space: (exit code, stderr, the
    child's own peak RSS in bytes)."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    proc = subprocess.run([sys.executable, "-c", PEAK, "predict", str(run), str(image)], capture_output=True,
                          text=True, timeout=300, preexec_fn=limit, env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
    err, _, peak = proc.stderr.rpartition("PEAK_RSS ")
    assert "Traceback" not in err, err
    return proc.returncode, err, int(peak.strip()) * 1024


@pytest.mark.parametrize("size, words", [((50_000, 1), "aspect ratio of 50000:1"),
                                         ((1, 400_000), "aspect ratio of 400000:1"),
                                         ((10_000, 10_000), "100 megapixels")])
def test_image_bombs_are_refused_from_their_header(tmp_path, trained, size, words):
    bomb = tmp_path / "bomb.png"
    Image.new("L", size).save(bomb)
    assert bomb.stat().st_size < 200_000
    code, err, peak = predict_process(trained["run"], bomb)
    assert code == 2, err
    assert err.count("error:") == 1 and str(bomb) in err and words in err, err
    assert peak < 300 << 20, f"peak RSS {peak >> 20} MB"


def test_a_16_bit_png_is_scaled_not_clipped(tmp_path, trained):
    digit = trained["digits"][0]
    eight = tmp_path / "digit8.png"
    Image.fromarray(digit).save(eight)
    sixteen = tmp_path / "digit16.png"
    Image.fromarray(digit.astype(np.uint16) * 257).save(sixteen)
    with Image.open(sixteen) as im:
        assert im.mode.startswith("I;16")
    a, b = predict_files(trained["loaded"], [eight, sixteen], invert=False)
    np.testing.assert_array_equal(a.probs, b.probs)


def test_an_animated_gif_gives_its_first_frame_and_says_so(tmp_path, trained):
    first, second = trained["digits"][1], trained["digits"][2]
    gif = tmp_path / "anim.gif"
    Image.fromarray(first).save(gif, save_all=True, append_images=[Image.fromarray(second)], duration=100, loop=0)
    png = tmp_path / "first.png"
    Image.fromarray(first).save(png)
    a, b = predict_files(trained["loaded"], [png, gif], invert=False)
    np.testing.assert_allclose(a.probs, b.probs, rtol=0, atol=1e-6)   # GIF palette: grey levels kept
    assert b.note == "first of 2 frames"
    code, out = invoke("predict", trained["run"], gif)
    assert code == 0 and f"{gif}  (first of 2 frames)" in out, out


def test_a_large_photo_is_shrunk_before_padding(tmp_path, trained):
    """4000x3000 (12 megapixels, not square): read and classified in bounded memory."""
    rng = np.random.default_rng(0)
    photo = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 255, (3000, 4000), dtype=np.uint8)).save(photo, compress_level=1)
    code, err, peak = predict_process(trained["run"], photo)
    assert code == 0, err
    assert peak < 400 << 20, f"peak RSS {peak >> 20} MB"
