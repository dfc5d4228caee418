#!/usr/bin/env bash
# Put a perf_analyzer that runs on this machine into .tools/perf_analyzer (bin/ and lib/).
#
# perf-analyzer's own PyPI wheels (2.58 and later) need glibc 2.38. tritonclient 2.51's wheel
# carries a perf_analyzer built for glibc 2.34 that loads libb64.so.0d (Debian's libb64-0d) and
# libcudart.so.12 (the nvidia-cuda-runtime-cu12 wheel; nothing runs on a GPU): this takes the
# binary and those two libraries, installs nothing into the Python environment, and leaves the
# machine's perf_analyzer alone if it has one. tests/live/test_perf_analyzer.py finds the result.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.tools/perf_analyzer
if [ -x "$dest/bin/perf_analyzer" ]; then exit 0; fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: -d "$work" "tritonclient==2.51.0" "nvidia-cuda-runtime-cu12>=12,<13"
python3 - "$work" "$dest" <<'PY'
import sys, zipfile
from pathlib import Path

work, dest = Path(sys.argv[1]), Path(sys.argv[2])
for sub in ("bin", "lib"):
    (dest / sub).mkdir(parents=True, exist_ok=True)
for wheel in work.glob("*.whl"):
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if name.endswith("/bin/perf_analyzer"):
                target = dest / "bin" / "perf_analyzer"
            elif name.rsplit("/", 1)[-1] == "libcudart.so.12":
                target = dest / "lib" / "libcudart.so.12"
            else:
                continue
            target.write_bytes(archive.read(name))
            target.chmod(0o755)
PY
if ! ldconfig -p 2>/dev/null | grep -q libb64.so.0d; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    (cd "$work" && apt-get download -qq libb64-0d 2>/dev/null || (apt-get update -qq && apt-get download -qq libb64-0d))
    dpkg-deb -x "$work"/libb64-0d_*.deb "$work/b64"
    cp "$work"/b64/usr/lib/*/libb64.so.0d "$dest/lib/"
  fi
fi
"$dest/bin/perf_analyzer" --version >/dev/null 2>&1 || LD_LIBRARY_PATH="$dest/lib" "$dest/bin/perf_analyzer" --version
