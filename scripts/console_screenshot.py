"""Take the README's screenshot of the console: the demo model opened and one prediction made.

Run against a server with the demo model (needs playwright and Debian's chromium):
``python scripts/console_screenshot.py [http://localhost:8080] [docs/console.png]``.
The picture is written with a palette of 256 colours (about a third of the size, the same to the eye).
"""

import base64
import struct
import sys
import zlib

import numpy as np
from playwright.sync_api import sync_playwright

url = sys.argv[1] if len(sys.argv) > 1 else "http://localhost:8080"
out = sys.argv[2] if len(sys.argv) > 2 else "docs/console.png"
flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"]

# Chromium decodes its own PNG on a blank page (no policy there) and hands back the RGBA pixels.
DECODE = """async (png) => {
  const bitmap = await createImageBitmap(await (await fetch(`data:image/png;base64,${png}`)).blob());
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const context = canvas.getContext("2d");
  context.drawImage(bitmap, 0, 0);
  const bytes = context.getImageData(0, 0, bitmap.width, bitmap.height).data;
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return { width: bitmap.width, height: bitmap.height, pixels: btoa(text) };
}"""


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def palette_png(width: int, height: int, rgba: bytes) -> bytes:
    """An 8-bit palette PNG of the pixels: the 256 commonest colours, every other one drawn as the nearest of them."""
    rgb = np.frombuffer(rgba, np.uint8).reshape(height, width, 4)[:, :, :3].astype(np.int32)
    colors, index, counts = np.unique(rgb.reshape(-1, 3), axis=0, return_inverse=True, return_counts=True)
    palette = colors[np.argsort(counts)[::-1][:256]]
    nearest = np.argmin(((colors[:, None, :] - palette[None, :, :]) ** 2).sum(axis=2), axis=1)
    rows = nearest[index.reshape(-1)].astype(np.uint8).reshape(height, width)
    raw = np.hstack([np.zeros((height, 1), np.uint8), rows]).tobytes()  # filter 0 on every row
    header = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"PLTE", palette.astype(np.uint8).tobytes())
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


with sync_playwright() as p:
    browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=flags)
    page = browser.new_page(viewport={"width": 1000, "height": 700})
    page.goto(url)
    page.wait_for_selector("#status.badge-ready")
    page.click("#models tbody tr[data-id='iris']")
    page.fill("#request", '{\n  "model_id": "iris",\n  "features": [5.1, 3.5, 1.4, 0.2]\n}')
    page.dispatch_event("#request", "input")
    page.click("#predict")
    page.wait_for_selector("#response:not(:empty)")
    shot = page.screenshot(full_page=True)
    image = browser.new_page().evaluate(DECODE, base64.b64encode(shot).decode())
    browser.close()
with open(out, "wb") as file:
    file.write(palette_png(image["width"], image["height"], base64.b64decode(image["pixels"])))
print(f"wrote {out}")
