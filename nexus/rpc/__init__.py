"""gRPC: the Open Inference Protocol's ``GRPCInferenceService`` beside the HTTP server, on the same models.

``inference.proto`` is the contract; ``inference_pb2*.py`` are generated from it
(``scripts/generate_grpc.sh``); ``servicer.py`` is the thin protocol over the inference layer;
``server.py`` starts and stops the server inside each gunicorn worker, after the fork.
"""
