"""Call Model Nexus with Triton's own client (pip install 'tritonclient[http]').

Run against a server with the demo model: ``python scripts/tritonclient_example.py [host:port]``.
"""

import argparse

import numpy as np
import tritonclient.http as httpclient

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("url", nargs="?", default="localhost:8080", help="the server's host:port (default localhost:8080)")
url = parser.parse_args().url
client = httpclient.InferenceServerClient(url)
print("live:", client.is_server_live(), "ready:", client.is_model_ready("iris"))

features = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
tensor = httpclient.InferInput("input", list(features.shape), "FP32")
tensor.set_data_from_numpy(features, binary_data=True)  # raw bytes after the JSON header
outputs = [httpclient.InferRequestedOutput(name, binary_data=True) for name in ("output_label", "output_probability")]

result = client.infer("iris", [tensor], outputs=outputs)
print("labels:", result.as_numpy("output_label"))
print("probabilities:\n", result.as_numpy("output_probability"))
print("class order:", result.get_output("output_probability")["parameters"]["keys"])
