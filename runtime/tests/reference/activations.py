"""PyTorch's values and gradients of the activations at the points
`runtime/tests/cnn_ops.rs` pins (`torch_reference_values`), the switch
points of hardswish and hardsigmoid among them.

Run with the project's libtorch install (the output is activations.txt):

    PYTHONPATH=$HOME/.cache/qatc/torch-2.13.0 python3 runtime/tests/reference/activations.py
"""

import struct

import torch
import torch.nn.functional as F

def f32(v):
    """The shortest decimal that reads back as the same float32."""
    bits = struct.pack("<f", v)
    for digits in range(1, 10):
        text = f"{v:.{digits}g}"
        if struct.pack("<f", float(text)) == bits:
            return text if any(c in text for c in ".en") else text + ".0"
    raise AssertionError(v)


POINTS = [-4.0, -3.0, -1.5, 0.0, 1.5, 3.0, 4.0, 6.0]

print(f"torch {torch.__version__}")
print(f"x {POINTS}")
for name, f in [
    ("hardswish", F.hardswish),
    ("hardsigmoid", F.hardsigmoid),
    ("sigmoid", torch.sigmoid),
    ("silu", F.silu),
    ("gelu", F.gelu),
]:
    x = torch.tensor(POINTS, requires_grad=True)
    y = f(x)
    y.sum().backward()
    print(f"{name} value [{', '.join(f32(float(v)) for v in y.detach())}]")
    print(f"{name} grad [{', '.join(f32(float(v)) for v in x.grad)}]")
