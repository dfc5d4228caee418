"""Regenerate the demo model: a scikit-learn iris classifier as models/iris.onnx plus its sidecar.

Run from the project root: ``python scripts/make_demo_model.py [MODEL_DIR]``. Needs the test
dependencies (scikit-learn, skl2onnx). The model is written through the server's own store, so
the sidecar is exactly what an upload would produce.
"""

from __future__ import annotations

import sys
from pathlib import Path

from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nexus.registry import Registry  # noqa: E402
from nexus.store import ModelStore  # noqa: E402


def build() -> bytes:
    """Train the classifier and return it as ONNX bytes (label + ZipMap probabilities)."""
    features, labels = load_iris(return_X_y=True)
    classifier = LogisticRegression(max_iter=500).fit(features.astype("float32"), labels)
    onnx_model = to_onnx(classifier, initial_types=[("input", FloatTensorType([None, 4]))], target_opset={"": 15, "ai.onnx.ml": 3})
    return onnx_model.SerializeToString()


def main(model_dir: str = "models") -> None:
    store = ModelStore(Path(model_dir))
    store.ensure()
    registry = Registry(store, ort_threads=1)
    if store.exists("iris"):
        registry.delete("iris")
    pending = store.new_pending()
    try:
        pending.file.write(build())
        model = registry.upload("iris", "Iris classifier (logistic regression)", "v1.0.0", pending)
    finally:
        pending.discard()
    print(f"wrote {model.path} ({model.size_bytes} bytes, sha256 {model.sha256[:12]}...)")


if __name__ == "__main__":
    main(*sys.argv[1:])
