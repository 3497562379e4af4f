"""jpeg_check.jpeg_damage: libjpeg's warnings on a JPEG damaged in the middle (header and
end marker intact), which PIL and tf.io.decode_image otherwise decode without an error."""

import io
import re

import numpy as np
from PIL import Image

from fpn_keras.data.jpeg_check import jpeg_damage


def _jpeg_bytes():
    rng = np.random.default_rng(0)
    pixels = (rng.random((96, 128, 3)) * 255).astype(np.uint8)
    pixels[20:60, 30:90] = [200, 30, 30]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def damaged_jpegs(directory):
    """Writes a clean JPEG and three damaged in the middle -> {name: path}."""
    data = _jpeg_bytes()
    middle = len(data) // 2
    variants = {
        "clean": data,
        "zeroed": data[:middle] + bytes(200) + data[middle + 200:],  # decodes, garbage in the middle
        "cut": data[:middle] + data[middle + 400:],  # the scan ends early: flat blocks at the bottom
        "markers": data[:middle] + b"\xff\x55" * 50 + data[middle + 100:],  # undecodable
    }
    paths = {}
    for name, content in variants.items():
        paths[name] = str(directory / f"{name}.jpg")
        with open(paths[name], "wb") as f:
            f.write(content)
    return paths


def test_damage_in_the_middle_is_reported_in_libjpeg_words(tmp_path):
    paths = damaged_jpegs(tmp_path)
    for name in ("zeroed", "cut"):  # PIL decodes both without a word
        with Image.open(paths[name]) as image:
            image.load()
    assert jpeg_damage(paths["clean"]) is None
    assert re.fullmatch(r"Corrupt JPEG data: \d+ extraneous bytes before marker 0xd9", jpeg_damage(paths["zeroed"]))
    assert jpeg_damage(paths["cut"]) == "Corrupt JPEG data: premature end of data segment"
    said = jpeg_damage(paths["markers"])
    assert said.startswith("undecodable: jpeg::Uncompress failed. Invalid JPEG data") and "0x55" in said, said


def test_the_capture_leaves_stderr_working(tmp_path, capfd):
    paths = damaged_jpegs(tmp_path)
    jpeg_damage(paths["cut"])
    import sys

    print("after the check", file=sys.stderr, flush=True)
    err = capfd.readouterr().err
    assert "after the check" in err and "premature end" not in err
