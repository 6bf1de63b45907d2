"""Makes the compact golden set in this directory from a full one.

    python3 tests/golden/make_compact.py ../shared/golden tests/golden

Needs `torch` and `safetensors` (the seed's environment). Copies the
quantizer tensors, ToyNet and ResNet20 whole (their training-mode logits and
gradients depend on the whole batch: BatchNorm uses batch statistics), and
cuts the integer ToyNet to its first two images (everything in it is per
image except the state), storing its integer taps as int32 (they are
clamped activations, far inside int32; the tests read int32 and int64).
MobileNetV2 (19 MB) stays external.
"""
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

IMAGES = 2


def main(src: Path, dst: Path) -> None:
    for name in ["quantizers.safetensors", "toynet.safetensors", "resnet20.safetensors"]:
        shutil.copyfile(src / name, dst / name)
    t = load_file(str(src / "toynet_int.safetensors"))
    out = {}
    for k, v in t.items():
        if k.startswith("state."):
            out[k] = v
        elif k.startswith("int."):
            assert v.abs().max() < 2**31
            out[k] = v[:IMAGES].to(torch.int32).contiguous()
        else:  # input, logits_fakequant, logits_int
            out[k] = v[:IMAGES].contiguous()
    save_file(out, str(dst / "toynet_int.safetensors"))
    meta = json.loads((src / "meta.json").read_text())
    meta.pop("mobilenetv2", None)
    meta["compact"] = {
        "from": str(src),
        "toynet_int_images": IMAGES,
        "whole": ["quantizers", "toynet", "resnet20"],
        "left_out": ["mobilenetv2"],
    }
    (dst / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
