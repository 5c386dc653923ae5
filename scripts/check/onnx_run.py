"""Independent runtime for the tests: checks an ONNX model with onnx.checker (full check) and runs
it with ONNX Runtime on raw f32 images, comparing its predictions with ours.

    python3 onnx_run.py MODEL.onnx IMAGES.f32 N C H W OURS.i64 [LOGITS_OUT.f32]

IMAGES.f32 holds N*C*H*W little-endian floats; OURS.i64 our N predicted classes. Prints one JSON
line: {"checker": "ok", "agreement": share of equal predictions, "n": N, "opset": ...}.
"""
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort


def main():
    model_path, images_path = sys.argv[1], sys.argv[2]
    n, c, h, w = (int(v) for v in sys.argv[3:7])
    ours = np.fromfile(sys.argv[7], dtype="<i8")
    model = onnx.load(model_path)
    onnx.checker.check_model(model, full_check=True)
    x = np.fromfile(images_path, dtype="<f4").reshape(n, c, h, w)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    session = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
    logits = np.concatenate(
        [session.run(["logits"], {"input": x[i : i + 500]})[0] for i in range(0, n, 500)]
    )
    if len(sys.argv) > 8:
        logits.astype("<f4").tofile(sys.argv[8])
    theirs = logits.argmax(axis=1)
    print(
        json.dumps(
            {
                "checker": "ok",
                "agreement": float((theirs == ours).mean()),
                "n": int(n),
                "opset": int(model.opset_import[0].version),
            }
        )
    )


if __name__ == "__main__":
    main()
