"""Prints the seed vectors of docs/design.md section 2 through tokensampler (numpy only)."""

import numpy as np
import tokensampler as ts

x = np.array([6, 2, 7, 0.1, -8, 9], dtype=np.float64)
for t in (1.0, 0.1, 10.0):
    print(f"softmax at T={t}:", np.array2string(ts.probs(x, temperature=t), precision=4))
x = np.array([4.51, 0.89, -1.90, 6.75, 1.63, -1.62, -1.89, 6.28, 1.79])
print("top-k 3:", np.array2string(ts.probs(x, top_k=3), precision=4))
k = ts.probs(
    np.array([0.8, 0.9, 0.1, 0.4]),
    frequency_scale=1.1,
    presence_scale=1.2,
    history=[0, 1, 0, 2, 0, 0],
)
print("k-scaling:", np.array2string(k, precision=4))
print("ten draws, seed 0:", [int(i) for i in ts.sample(np.tile(x, (10, 1)), top_p=0.9, seed=0)])
