"""The inference runtime: the export contract, the engines, image decoding, the answers and the
activation-map overlay. Needs numpy, Pillow, ONNX Runtime and (for its forms) OpenVINO; no HTTP,
BentoML, torch or onnx, so the service, the batch job, the benchmarks and the client share it."""
