"""The floor Model Nexus is measured against: the Flask app a user would write in 25 lines.

No request ids, no metrics, no logs, no validation. Loads every .onnx in $NAIVE_MODEL_DIR.
"""

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from flask import Flask, jsonify, request

app = Flask(__name__)
options = ort.SessionOptions()
options.intra_op_num_threads = 1
sessions = {
    path.stem: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for path in Path(os.environ.get("NAIVE_MODEL_DIR", "models")).glob("*.onnx")
}


@app.post("/predict")
def predict():
    body = request.get_json()
    session = sessions[body["model_id"]]
    x = np.asarray(body["features"], dtype=np.float32)
    if x.ndim == 1:
        x = x.reshape(1, -1)
    outputs = session.run(None, {session.get_inputs()[0].name: x})
    values = [o.tolist() if isinstance(o, np.ndarray) else [{str(k): v for k, v in m.items()} for m in o] for o in outputs]
    return jsonify({"prediction": np.ravel(values[0]).tolist() if isinstance(outputs[0], np.ndarray) else values[0],
                    "outputs": dict(zip([o.name for o in session.get_outputs()], values))})


@app.post("/echo")
def echo():
    request.get_data()
    return jsonify({"ok": True})
