#!/usr/bin/env python3
"""Relative L2 error of each PNG against a reference PNG (same size): ||a - ref|| / ||ref||
over pixel values mapped to [-1, 1], and the PSNR over 8-bit pixel values (RGB).
Usage: compare_images.py <ref.png> <other.png>..."""

import math
import sys
import zlib


def read_png_rgb(path):
    # Minimal PNG reader (8-bit RGB/RGBA, non-interlaced), enough for SaveImage's output, so no
    # Pillow is needed on the GPU machine.
    data = open(path, "rb").read()
    pos, idat, width, height, channels = 8, b"", 0, 0, 3
    while pos < len(data):
        n = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + n]
        if kind == b"IHDR":
            width, height = int.from_bytes(body[0:4], "big"), int.from_bytes(body[4:8], "big")
            channels = {2: 3, 6: 4}[body[9]]
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride = width * channels
    rows, prev = [], bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 255
        rows.append(bytes(line))
        prev = line
    return [v / 127.5 - 1.0 for row in rows for i, v in enumerate(row) if i % channels < 3]


def main(ref, others):
    r = read_png_rgb(ref)
    norm = sum(v * v for v in r) ** 0.5
    for o in others:
        x = read_png_rgb(o)
        sq = sum((a - b) ** 2 for a, b in zip(x, r))
        err = sq**0.5 / norm
        mse = sq / len(r) / 4.0  # [-1, 1] back to [0, 1]
        psnr = float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)
        print(f"  image rel err vs bf16: {err:.3e}, PSNR {psnr:.2f} dB  ({o})")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
