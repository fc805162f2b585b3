"""How big and how fast a model is, and where it runs: counts, latency, devices, int8, ONNX export, plans."""
