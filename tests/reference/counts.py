"""Parameter and MAC counts of the reference networks in models.py.

    PYTHONPATH=$HOME/.cache/qatc/torch-2.13.0 python3 tests/reference/counts.py > tests/reference/counts.json

Prints one JSON document (to stdout): for every network of models.MODELS its
totals and one row per layer with weights (conv, linear, batch norm), counted
with forward hooks on one 1x3x32x32 input, under qatc's conventions
(docs/qspec.md, section 13.3):

  params  conv: out * in/groups * k * k (+ out with a bias); linear:
          in * out + out; BN: 2 per channel (weight and bias; running stats
          are buffers, not counted). The total is sum(p.numel()) over
          model.parameters(), checked equal to the sum of the rows.
  macs    conv: output elements * in/groups * kh * kw; linear: in * out;
          0 for everything else (BN, activations, pooling, the SE multiply,
          residual adds, concat, split, shuffle; biases add no MACs).

The hook counts are checked against torch.utils.flop_counter.FlopCounterMode
(convolution and addmm FLOPs = 2 x MACs). Only torch is needed.
"""

import json
import os
import sys
import warnings

warnings.filterwarnings("ignore", message=".*NumPy.*")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from models import MODELS  # noqa: E402

INPUT = (3, 32, 32)
CLASSES = 10


def shape(t):
    return "x".join(str(d) for d in t.shape[1:])


def count(name, model):
    model.eval()
    rows = []
    hooks = []

    def hook(mod_name):
        def f(mod, inputs, output):
            x = inputs[0]
            params = sum(p.numel() for p in mod.parameters(recurse=False))
            row = {"name": mod_name}
            if isinstance(mod, nn.Conv2d):
                kh, kw = mod.kernel_size
                dw = mod.groups > 1 and mod.groups == mod.out_channels
                row["op"] = "dwconv" if dw else "conv"
                row.update(
                    in_shape=shape(x), out_shape=shape(output),
                    kernel=kh, stride=mod.stride[0], padding=mod.padding[0],
                    groups=mod.groups, bias=mod.bias is not None,
                    params=params,
                    macs=output[0].numel() * (mod.in_channels // mod.groups) * kh * kw,
                )
                assert kh == kw and mod.stride[0] == mod.stride[1] and mod.padding[0] == mod.padding[1]
                assert params == mod.out_channels * mod.in_channels // mod.groups * kh * kw + (
                    mod.out_channels if mod.bias is not None else 0)
            elif isinstance(mod, nn.Linear):
                row["op"] = "linear"
                row.update(in_shape=shape(x), out_shape=shape(output), bias=mod.bias is not None,
                           params=params, macs=mod.in_features * mod.out_features)
                assert x.dim() == 2
            elif isinstance(mod, nn.BatchNorm2d):
                row["op"] = "bn"
                row.update(in_shape=shape(x), out_shape=shape(output), params=params, macs=0)
                assert params == 2 * mod.num_features
            rows.append(row)
        return f

    for mod_name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
            hooks.append(mod.register_forward_hook(hook(mod_name)))
        elif any(True for _ in mod.parameters(recurse=False)):
            raise SystemExit(f"{name}: {mod_name} ({type(mod).__name__}) has parameters but no counting rule")

    with torch.no_grad():
        out = model(torch.zeros(1, *INPUT))
    for h in hooks:
        h.remove()
    # A second, independent count: torch's own FLOP counter (2 FLOPs per MAC,
    # convolutions and matrix products only) must agree with the hooks.
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, *INPUT))
    flops = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    assert tuple(out.shape) == (1, CLASSES), out.shape

    total = sum(p.numel() for p in model.parameters())
    assert total == sum(r["params"] for r in rows), "a module with parameters was not run"
    assert len(rows) == sum(1 for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d))), \
        "a hooked module ran more or less than once"
    conv_macs = sum(r["macs"] for r in rows if r["op"] in ("conv", "dwconv"))
    fc_macs = sum(r["macs"] for r in rows if r["op"] == "linear")
    assert flops.pop("aten.convolution", 0) == 2 * conv_macs, (name, flops, conv_macs)
    assert flops.pop("aten.addmm", 0) == 2 * fc_macs, (name, flops, fc_macs)
    assert not flops, (name, "FLOPs outside convs and linears", flops)
    return {
        "params": total,
        "conv_macs": conv_macs,
        "fc_macs": fc_macs,
        "macs": conv_macs + fc_macs,
        "convs": sum(1 for r in rows if r["op"] in ("conv", "dwconv")),
        "linears": sum(1 for r in rows if r["op"] == "linear"),
        "bns": sum(1 for r in rows if r["op"] == "bn"),
        "layers": rows,
    }


def dump(doc):
    """JSON with one line per layer row (readable diffs), otherwise indented."""
    lines = ["{"]
    head = [(k, v) for k, v in doc.items() if k != "models"]
    for k, v in head:
        lines.append(f"  {json.dumps(k)}: {json.dumps(v)},")
    lines.append('  "models": {')
    names = list(doc["models"])
    for i, name in enumerate(names):
        m = doc["models"][name]
        lines.append(f"    {json.dumps(name)}: {{")
        for k, v in m.items():
            if k != "layers":
                lines.append(f"      {json.dumps(k)}: {json.dumps(v)},")
        lines.append('      "layers": [')
        for j, r in enumerate(m["layers"]):
            lines.append("        " + json.dumps(r) + ("," if j + 1 < len(m["layers"]) else ""))
        lines.append("      ]")
        lines.append("    }" + ("," if i + 1 < len(names) else ""))
    lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main():
    torch.manual_seed(0)
    doc = {
        "generator": "tests/reference/counts.py (networks: tests/reference/models.py)",
        "torch": torch.__version__.split("+")[0],
        "input": "x".join(map(str, INPUT)),
        "classes": CLASSES,
        "conventions": "params: conv out*in/groups*k*k (+out with bias), linear in*out+out, BN 2 per channel; "
                       "macs: conv output elements*in/groups*k*k, linear in*out, 0 for everything else; "
                       "per sample (batch 1)",
        "models": {name: count(name, make()) for name, make in MODELS.items()},
    }
    text = dump(doc)
    json.loads(text)  # well-formed
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
