"""ONNX Runtime baseline for `gstick bench cnn-int8`: median milliseconds of one batch through an
exported model (CPU, intra-op threads as given).

    python3 ort_cnn.py MODEL.onnx IMAGES.f32 N C H W REPEATS THREADS
"""
import json
import sys
import time

import numpy as np
import onnxruntime as ort


def main():
    model, images = sys.argv[1], sys.argv[2]
    n, c, h, w, repeats, threads = (int(v) for v in sys.argv[3:9])
    x = np.fromfile(images, dtype="<f4").reshape(n, c, h, w)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    s = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    s.run(["logits"], {"input": x})
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        s.run(["logits"], {"input": x})
        times.append(time.perf_counter() - t)
    times.sort()
    print(json.dumps({"ms": times[len(times) // 2] * 1e3, "onnxruntime": ort.__version__}))


if __name__ == "__main__":
    main()
