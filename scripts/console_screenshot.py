"""Take the README's screenshot of the console: the demo model opened and one prediction made.

Run against a server with the demo model (needs playwright and Debian's chromium):
``python scripts/console_screenshot.py [http://localhost:8080] [docs/console.png]``.
"""

import sys

from playwright.sync_api import sync_playwright

url = sys.argv[1] if len(sys.argv) > 1 else "http://localhost:8080"
out = sys.argv[2] if len(sys.argv) > 2 else "docs/console.png"
flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"]

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
    page.screenshot(path=out, full_page=True)
    browser.close()
print(f"wrote {out}")
