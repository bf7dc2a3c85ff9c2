"""Export: fold batch norm and stochastic-depth scaling, write ONNX and TensorRT engines."""
