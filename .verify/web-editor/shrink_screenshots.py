#!/usr/bin/env python3
"""Copies the browser test's screenshots into docs/, reduced to 256 colours (a third of the size;
the UI's flat colours survive it). Usage: shrink_screenshots.py SHOT_DIR DEST_DIR

The screenshots come from `VEETANCE_SCREENSHOTS=SHOT_DIR pytest tests/python/test_web_editor.py`;
look at them before committing (docs/web-editor.md says what each must show). Needs Pillow (in
the test venv)."""

import sys
from pathlib import Path

from PIL import Image


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    dst.mkdir(parents=True, exist_ok=True)
    shots = sorted(p for p in src.glob("*.png") if "failed" not in p.name)
    if not shots:
        print(f"no screenshots in {src}", file=sys.stderr)
        return 1
    for shot in shots:
        image = Image.open(shot).convert("RGB")
        image = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                               dither=Image.Dither.NONE)
        out = dst / shot.name
        image.save(out, optimize=True)
        print(f"{out} ({out.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
