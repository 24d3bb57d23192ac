"""A TF Serving-compatible gRPC model server (`python -m model_server`) for machines without the real one."""
