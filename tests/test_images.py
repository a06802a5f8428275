"""Bad image data through ``arf.images.open_image`` and the ``BadInputCounter`` skip threshold.

Every corrupt kind must end as :class:`BadImage` (counted and skipped by the stages), never another exception, a
hang or a memory blow-up; every odd-but-valid mode must decode to the RGB a viewer would show.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import textwrap
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from arf.errors import ArfError
from arf.images import MAX_PIXELS, BadImage, BadInputCounter, TooManyBadInputs, open_image

# ---------------------------------------------------------------------------------------------- file builders


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, depth: int, color: int, rows: list[bytes] | None = None,
              extra: list[bytes] = (), row_bytes: int | None = None) -> bytes:
    """A PNG written by hand, so headers can lie and huge images cost only their compressed size.

    Without ``rows`` every row is zeros, compressed row by row (a 20000 x 20000 image is a few KB of work).
    """
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    comp = zlib.compressobj(9)
    if rows is None:
        zero_row = b"\0" * (1 + (row_bytes if row_bytes is not None else width))
        idat = b"".join(comp.compress(zero_row) for _ in range(height)) + comp.flush()
    else:
        idat = comp.compress(b"".join(b"\0" + r for r in rows)) + comp.flush()
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + b"".join(extra) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def photo(size: int = 32, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB").convert(mode)


VALID = {
    "jpeg": encode(photo(), "JPEG", quality=90),
    "png": encode(photo(), "PNG"),
    "webp": encode(photo(), "WEBP", quality=80),
    "gif": encode(photo().convert("P"), "GIF"),
}


def _jpeg_with_size(w: int, h: int) -> bytes:
    """A real JPEG whose SOF header is patched to claim ``w`` x ``h``."""
    data = bytearray(VALID["jpeg"])
    i = data.index(b"\xff\xc0")  # baseline SOF0: length(2) precision(1) height(2) width(2)
    data[i + 5:i + 9] = struct.pack(">HH", h, w)
    return bytes(data)


def _flip(data: bytes, start: int, every: int) -> bytes:
    out = bytearray(data)
    for i in range(start, len(out), every):
        out[i] ^= 0xFF
    return bytes(out)


# name -> (bytes, substring the BadImage message must contain)
CORRUPT: dict[str, tuple[bytes, str]] = {
    "empty bytes": (b"", "empty file"),
    "random bytes": (np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes(), "cannot decode"),
    "text file": (b"hello, this is not an image\n" * 20, "cannot decode"),
    "html error page as .jpg": (b"<!DOCTYPE html><html><body>403 Forbidden</body></html>", "cannot decode"),
    "svg text": (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "cannot decode"),
    "jpeg truncated to half": (VALID["jpeg"][: len(VALID["jpeg"]) // 2], "cannot decode"),
    "jpeg header only": (VALID["jpeg"][:200], "cannot decode"),
    "png truncated to half": (VALID["png"][: len(VALID["png"]) // 2], "cannot decode"),
    "png signature only": (VALID["png"][:8], "cannot decode"),
    "png without IDAT": (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
                         + _chunk(b"IEND", b""), "cannot decode"),
    "png bad CRC": (VALID["png"][:29] + b"\0\0\0\0" + VALID["png"][33:], "cannot decode"),
    "png corrupt zlib stream": (png_bytes(8, 8, 8, 2, rows=[b"\x10" * 24] * 8)[:41] + b"\xde\xad\xbe\xef" * 8
                                + png_bytes(8, 8, 8, 2, rows=[b"\x10" * 24] * 8)[73:], "cannot decode"),
    "webp truncated to half": (VALID["webp"][: len(VALID["webp"]) // 2], "cannot decode"),
    "webp RIFF header only": (VALID["webp"][:20], "cannot decode"),
    "gif truncated": (VALID["gif"][: len(VALID["gif"]) // 3], "cannot decode"),
    "1x1 png": (encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), "too small"),
    "1x500 png": (encode(Image.new("RGB", (1, 500)), "PNG"), "too small"),
    "png declaring 20000x20000 (header lies)": (png_bytes(20000, 20000, 8, 2, rows=[b"\0" * 24] * 8), "limit"),
    "jpeg declaring 65000x65000": (_jpeg_with_size(65000, 65000), "bomb"),
    "png just over the pixel limit": (png_bytes(9000, 8000, 1, 0, row_bytes=1125), "limit"),
    "png zTXt text bomb": (png_bytes(8, 8, 8, 0, rows=[b"\x80" * 8] * 8,
                                     extra=[_chunk(b"zTXt", b"k\0\0" + zlib.compress(b"A" * 50_000_000, 9))]),
                           "cannot decode"),
}


# ---------------------------------------------------------------------------------------------- corrupt input


# The pixel-limit cases are expected to warn on their way to the BadImage the test asserts.
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("kind", sorted(CORRUPT))
def test_corrupt_bytes_raise_bad_image(kind: str) -> None:
    data, why = CORRUPT[kind]
    with pytest.raises(BadImage) as e:
        open_image(data, name=f"x/{kind}.img")
    assert why in str(e.value)
    assert f"x/{kind}.img" in str(e.value), "the message names the file"
    assert isinstance(e.value, ArfError)


def test_bad_image_message_has_no_per_process_address() -> None:
    # Pillow says "cannot identify image file <_io.BytesIO object at 0x7f…>" for bytes; skip reasons are written
    # into outputs that a resumed run must reproduce byte for byte, so the message may not depend on the process.
    script = "from arf.images import open_image\ntry:\n    open_image(b'not an image at all', name='x.jpg')\n" \
             "except Exception as e:\n    print(e)\n"
    msgs = {subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
            for _ in range(2)}
    assert len(msgs) == 1, msgs
    assert "0x" not in msgs.pop()


# The pixel-limit cases are expected to warn on their way to the BadImage the test asserts.
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("kind", sorted(CORRUPT))
def test_corrupt_files_on_disk_raise_bad_image(kind: str, tmp_path: Path) -> None:
    p = tmp_path / "img.bin"
    p.write_bytes(CORRUPT[kind][0])
    with pytest.raises(BadImage, match=str(p).replace(".", r"\.")):
        open_image(p)


def test_skipped_image_is_named_once_in_the_counter_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Counters print the file themselves: the reason they get must not repeat it ("…/p.png (…/p.png: …)").
    p = tmp_path / "p.png"
    p.write_bytes(b"not an image")
    with pytest.raises(BadImage) as info:
        open_image(p)
    assert str(info.value).startswith(f"{p}: cannot decode") and str(p) not in info.value.reason
    counter = BadInputCounter("test", max_bad_fraction=1.0)
    with caplog.at_level("WARNING"):
        counter.skip(str(p), info.value.reason)
    assert caplog.text.count(str(p)) == 1 and "cannot decode" in caplog.text
    assert BadImage("plain message").reason == "plain message"


def test_missing_file_directory_and_zero_byte_file(tmp_path: Path) -> None:
    with pytest.raises(BadImage, match="file not found"):
        open_image(tmp_path / "nope.jpg")
    with pytest.raises(BadImage, match="file not found"):
        open_image(tmp_path)  # a folder where a file was expected
    (tmp_path / "zero.jpg").touch()
    with pytest.raises(BadImage, match="empty file"):
        open_image(tmp_path / "zero.jpg")


def test_smallest_accepted_image_is_2x2() -> None:
    assert open_image(encode(Image.new("RGB", (2, 2), (1, 2, 3)), "PNG")).size == (2, 2)


@pytest.mark.parametrize("fmt", sorted(VALID))
def test_valid_files_decode(fmt: str) -> None:
    img = open_image(VALID[fmt])
    assert img.mode == "RGB" and img.size == (32, 32)


# Fuzzing: random truncation points and byte flips of real JPEG/PNG/WebP/GIF files. The outcome must be an RGB
# image or BadImage, nothing else. 4 formats x 300 examples = 1200 mutated files per run.
FUZZ_EXAMPLES = 300


@pytest.mark.parametrize("fmt", sorted(VALID))
@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_files_never_crash(fmt: str, data: st.DataObject) -> None:
    raw = bytearray(VALID[fmt])
    cut = data.draw(st.integers(0, len(raw)), label="truncate at")
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(1, 255)), max_size=8),
                      label="xor bytes")
    for pos, mask in flips:
        raw[pos] ^= mask
    try:
        img = open_image(bytes(raw[:cut]))
    except BadImage:
        event("refused (BadImage)")  # --hypothesis-show-statistics reports how many of each outcome
        return
    event("decoded")
    assert img.mode == "RGB" and img.width >= 2 and img.height >= 2


def test_bit_flipped_scan_data_decodes_or_is_refused() -> None:
    # Pillow's JPEG decoder may paint garbage instead of failing; either outcome is fine, a crash is not.
    for every in (7, 31, 97):
        data = VALID["jpeg"][:300] + _flip(VALID["jpeg"][300:], 0, every)
        try:
            assert open_image(data).size == (32, 32)
        except BadImage:
            pass


# ---------------------------------------------------------------------------------------------- decompression bombs

BOMB_CHILD = textwrap.dedent(
    """
    import resource, sys
    # A ceiling so a regression cannot take the shared machine down with it: 1 GiB of address space.
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    from arf.images import BadImage, open_image
    try:
        open_image(sys.argv[1])
    except BadImage as e:
        print("BADIMAGE", e)
    # VmHWM is this process's own peak RSS (ru_maxrss would carry the parent's peak across fork + exec).
    hwm_kb = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    print("RSS_MB", hwm_kb / 1024)
    """
)


@pytest.mark.parametrize("w,h", [(20000, 20000), (9000, 8000)])
def test_real_decompression_bomb_refused_without_using_memory(tmp_path: Path, w: int, h: int) -> None:
    # A valid, fully compressed 1-bit PNG: a few KB on disk, w*h bytes (400 MB for 20000^2) once decoded.
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bytes(w, h, 1, 0, row_bytes=(w + 7) // 8))
    assert bomb.stat().st_size < 1_000_000 and w * h > MAX_PIXELS
    out = subprocess.run([sys.executable, "-c", BOMB_CHILD, str(bomb)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "BADIMAGE" in out.stdout and "bomb" in out.stdout and str(bomb) in out.stdout, out.stdout
    assert "out of memory" not in out.stdout, "refused from the header, not after trying to decode"
    rss = float(out.stdout.split("RSS_MB")[1])
    assert rss < 200, f"peak memory {rss:.0f} MB: the pixels were decoded"


# ---------------------------------------------------------------------------------------------- odd modes -> RGB


def test_cmyk_jpeg_decodes_to_rgb() -> None:
    red = Image.new("CMYK", (16, 16), (0, 255, 255, 0))
    img = open_image(encode(red, "JPEG", quality=95))
    r, g, b = img.getpixel((8, 8))
    assert img.mode == "RGB" and r > 230 and g < 25 and b < 25


def test_16bit_grey_png_scales_by_bit_depth() -> None:
    arr = np.array([[0, 257 * 64], [32896, 65535]], dtype=np.uint16).repeat(4, 0).repeat(4, 1)
    img = Image.fromarray(arr)
    assert img.mode.startswith("I;16")
    out = np.asarray(open_image(encode(img, "PNG")))
    assert out.shape == (8, 8, 3)
    assert out[0, 0].tolist() == [0, 0, 0]
    assert out[0, 4].tolist() == [64, 64, 64]
    assert out[4, 0].tolist() == [128, 128, 128]
    assert out[4, 4].tolist() == [255, 255, 255]


def test_dark_16bit_png_stays_dark() -> None:
    # Scaling by the image's own maximum would turn this nearly-black frame white.
    arr = np.full((8, 8), 1000, dtype=np.uint16)
    out = np.asarray(open_image(encode(Image.fromarray(arr), "PNG")))
    assert out.max() <= 5


def test_16bit_rgb_png() -> None:
    row = struct.pack(">HHH", 65535, 0, 32896) * 4
    img = open_image(png_bytes(4, 4, 16, 2, rows=[row] * 4))
    assert img.getpixel((1, 1)) == (255, 0, 128)


def test_32bit_int_image_holding_8bit_values() -> None:
    img = Image.fromarray(np.full((4, 4), 200, dtype=np.int32), mode="I")
    assert open_image(encode(img, "TIFF")).getpixel((0, 0)) == (200, 200, 200)


def test_palette_png_without_and_with_transparency() -> None:
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    assert open_image(encode(pal, "PNG")).getpixel((0, 0)) == (10, 200, 30)
    assert open_image(encode(pal, "PNG", transparency=1)).getpixel((0, 0)) == (255, 255, 255)
    assert open_image(encode(pal, "GIF", transparency=1)).getpixel((0, 0)) == (255, 255, 255)


def test_la_and_rgba_composited_on_white() -> None:
    la = Image.new("LA", (4, 4), (0, 0))
    la.putpixel((0, 0), (40, 255))
    img = open_image(encode(la, "PNG"))
    assert img.getpixel((0, 0)) == (40, 40, 40) and img.getpixel((1, 1)) == (255, 255, 255)
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    r, g, b = open_image(encode(rgba, "PNG")).getpixel((0, 0))
    assert 125 <= r <= 128 and r == g == b
    webp = open_image(encode(Image.new("RGBA", (4, 4), (255, 0, 0, 0)), "WEBP", lossless=True))
    assert webp.getpixel((2, 2)) == (255, 255, 255)


def test_rgb_png_with_colour_key_transparency() -> None:
    img = Image.new("RGB", (4, 4), (0, 255, 0))
    img.putpixel((0, 0), (9, 9, 9))
    out = open_image(encode(img, "PNG", transparency=(0, 255, 0)))
    assert out.getpixel((1, 1)) == (255, 255, 255) and out.getpixel((0, 0)) == (9, 9, 9)


@pytest.mark.parametrize("mode", ["1", "L", "I;16", "P", "LA", "RGBA", "CMYK", "YCbCr", "F", "LAB"])
def test_every_mode_in_memory_becomes_rgb(mode: str) -> None:
    # Formats that store the mode natively go through bytes; the rest are round-tripped through TIFF.
    src = photo(8, "RGB").convert(mode) if mode not in ("I;16", "F") else None
    if mode == "I;16":
        src = Image.fromarray(np.full((8, 8), 300, dtype=np.uint16))
    if mode == "F":
        src = Image.fromarray(np.full((8, 8), 100.0, dtype=np.float32))
    fmt = "TIFF" if mode in ("YCbCr", "F", "LAB") else "PNG" if mode != "CMYK" else "JPEG"
    data = encode(src, fmt)
    try:
        img = open_image(data)
    except BadImage:
        return  # refused with a clear message is acceptable for exotic modes; never another exception
    assert img.mode == "RGB" and img.size == (8, 8)


# ---------------------------------------------------------------------------------------------- BadInputCounter


def test_counter_passes_at_threshold_and_fails_past_it() -> None:
    c = BadInputCounter("caption", max_bad_fraction=0.05)
    for _ in range(95):
        c.ok()
    for i in range(5):
        c.skip(f"img{i}.jpg", "cannot decode")
    c.check()  # exactly 5% is allowed
    assert c.summary() == "caption: 95 ok, 5 skipped"
    c.skip("img5.jpg", "empty file")
    with pytest.raises(TooManyBadInputs) as e:
        c.check()
    msg = str(e.value)
    assert msg.startswith("caption: 6 of 101 inputs are bad")
    assert "max_bad_fraction=0.05" in msg
    assert "img0.jpg: cannot decode" in msg and "img4.jpg" in msg and "img5.jpg" not in msg, "first 5 examples"
    assert isinstance(e.value, ArfError)


def test_counter_front_loaded_bad_inputs_do_not_fail_a_good_run() -> None:
    # 15 broken files first, then 985 good ones: 1.5% bad overall, under the 5% limit.
    for total in (None, 1000):
        c = BadInputCounter("pool embed", max_bad_fraction=0.05, total=total)
        for i in range(15):
            c.skip(f"bad{i}", "truncated")
        for _ in range(985):
            c.ok()
        c.check()
        assert c.as_dict()["skipped"] == 15


def test_counter_stops_early_when_failure_is_certain() -> None:
    c = BadInputCounter("caption", max_bad_fraction=0.1, total=100)
    for i in range(10):
        c.skip(f"b{i}", "x")  # 10 of 100 may still pass
    with pytest.raises(TooManyBadInputs, match=r"11 of 11 seen \(of 100\)"):
        c.skip("b10", "x")


def test_counter_without_total_stops_a_mostly_broken_run() -> None:
    c = BadInputCounter("images", max_bad_fraction=0.05, min_seen=20)
    for _ in range(5):
        c.ok()
    with pytest.raises(TooManyBadInputs):
        for i in range(100):
            c.skip(f"b{i}", "cannot decode")
    assert c.seen == 20  # stopped at the first skip that made > half of >= 20 inputs bad


def test_counter_zero_tolerance_and_duplicates() -> None:
    c = BadInputCounter("strict", max_bad_fraction=0.0)
    c.ok()
    c.check()
    c.skip("same.jpg", "x")
    c.skip("same.jpg", "x")  # a duplicate row counts each time it is skipped
    assert c.n_bad == 2 and len(c.bad) == 1
    with pytest.raises(TooManyBadInputs):
        c.check()
    with pytest.raises(ArfError, match="max_bad_fraction"):
        BadInputCounter("x", max_bad_fraction=1.5)


def test_counter_is_thread_safe() -> None:
    c = BadInputCounter("threads", max_bad_fraction=1.0)

    def work(t: int) -> None:
        for i in range(500):
            c.ok()
            if i % 10 == 0:
                c.skip(f"{t}-{i}", "bad")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.good == 4000 and c.n_bad == 400 and c.seen == 4400


# The pixel-limit cases are expected to warn on their way to the BadImage the test asserts.
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_counter_end_to_end_with_open_image(tmp_path: Path) -> None:
    # The loop every stage runs: decode, count, skip; summary names the bad files.
    files = []
    for i, (data, _) in enumerate(v for _, v in sorted(CORRUPT.items())):
        p = tmp_path / f"bad{i}.img"
        p.write_bytes(data)
        files.append(p)
    for i in range(20 * len(CORRUPT)):
        p = tmp_path / f"good{i}.png"
        p.write_bytes(VALID["png"])
        files.append(p)
    c = BadInputCounter("stage", max_bad_fraction=0.05, total=len(files))
    for p in files:
        try:
            open_image(p)
            c.ok()
        except BadImage as e:
            c.skip(p.name, str(e))
    c.check()
    assert c.n_bad == len(CORRUPT) and c.good == 20 * len(CORRUPT)
