"""Export: fold batch norm and stochastic-depth scaling, write ONNX and TensorRT engines."""

from common.cli import require_extra

require_extra("export", "train,export", ("torch", "onnx", "onnxscript", "onnxruntime", "nncf"))
