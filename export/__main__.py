"""python -m export (--checkpoint C | --onnx MODEL) --out models/NAME.onnx [--data PATH] [--int8]
                    [--calib-images N] [--weights fp32|fp16] [--tta-flip] [--test-size PX]
                    [--calibrate temperature|temperature-nll|none]
                    [--tensorrt ENGINE --trt-precision fp16|int8 --max-batch N]

Folds the checkpoint's network, writes a self-describing ONNX model (uint8 NHWC in,
normalisation inside; logits, probabilities and class-activation maps out; see
inference/contract.py), checks it against PyTorch under ONNX Runtime and fails on a mismatch. From
--onnx (an earlier export, when its checkpoint is gone) the graph is rewritten instead and checked
against the file as it was. With --data it also measures val accuracy into the metadata and folds
into the head a temperature fitted on half of val, so the probabilities mean what they say (ECE,
NLL and Brier before and after, on the other half, go into the card); --int8
adds the INT8 forms NAME.int8.onnx (ONNX Runtime) and NAME.int8.xml/.bin (OpenVINO), each refused
if it loses more than 0.5 point top-1 or agrees with fp32 on under 95% of val; --weights fp16
halves the file; --tta-flip and --test-size put test-time augmentation in the graph; --tensorrt
builds a TensorRT 10 engine (untested: TensorRT cannot be installed on the machines this project
has run on).
"""

from __future__ import annotations

import sys

from common.cli import ConfigError, Parser, fail
from export.calibration import METHODS
from export.tensorrt import PRECISIONS, EngineBuildError, TensorRTUnavailable
from inference.contract import ContractError


def parse(argv=None):
    p = Parser(prog="python -m export", description=__doc__.split("\n\n")[1])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a training checkpoint (models/model.pt, last.pt)")
    source.add_argument("--onnx", help="an exported fp32 model to rewrite (maps, TTA) and quantize")
    p.add_argument("--out", required=True, help="the model to write, e.g. models/NAME.onnx")
    p.add_argument("--data", help="Tiny ImageNet zip or folder: val accuracy, parity, calibration")
    p.add_argument("--int8", action="store_true",
                   help="also write NAME.int8.onnx and .int8.xml/.bin (needs --data)")  # fmt: skip
    p.add_argument("--tta-flip", action="store_true",
                   help="average with the mirror image's outputs, in the graph")  # fmt: skip
    p.add_argument("--test-size", type=int, metavar="PX",
                   help="upsample the 64-px input to PX inside the graph (FixRes)")  # fmt: skip
    p.add_argument("--calibrate", choices=METHODS,
                   help="probability calibration fitted on half of val (default with --data: "
                        "temperature, fitted by the Brier score; temperature-nll: by NLL; none: "
                        "the logits as they are)")  # fmt: skip
    p.add_argument("--calib-images", type=int, default=512,
                   help="training images the INT8 forms calibrate their ranges on")  # fmt: skip
    p.add_argument("--tensorrt", metavar="ENGINE",
                   help="also build a TensorRT engine here (untested: TensorRT cannot be "
                        "installed on the machines this project has run on)")  # fmt: skip
    p.add_argument("--trt-precision", default="fp16", choices=PRECISIONS)
    p.add_argument("--max-batch", type=int, default=64, help="largest batch the engine accepts")
    p.add_argument("--weights", default="fp32", choices=("fp32", "fp16"),
                   help="fp16: half the file; compute stays fp32")  # fmt: skip
    p.add_argument("--no-bench", action="store_true", help="skip the fp32/int8 speed measurement")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    # After parsing: --help and a bad option need no torch.
    from export.calibration import CalibrationError
    from export.graph import GraphError
    from export.onnx_export import ExportError
    from export.pipeline import export
    from training.checkpoint import CheckpointError
    from training.data import DataError

    try:
        export(args.checkpoint or args.onnx, args.out, data=args.data, int8=args.int8,
               calib_images=args.calib_images, tta_flip=args.tta_flip, tta_size=args.test_size,
               calibrate=args.calibrate,
               tensorrt=args.tensorrt, trt_precision=args.trt_precision,
               max_batch=args.max_batch, bench=not args.no_bench,
               weights=args.weights)  # fmt: skip
    except (ConfigError, CheckpointError, DataError, ExportError, ContractError, GraphError,
            TensorRTUnavailable, EngineBuildError, CalibrationError) as e:  # fmt: skip
        return fail(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
