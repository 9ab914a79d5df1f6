"""Export engines/unet.pt to engines/unet.onnx (dynamic batch, height and width).

The graph returns probabilities (sigmoid applied), like every runner. The weights
file's SHA-256 and the network config are stored as ONNX metadata, so a test can
check that the shipped ONNX was exported from the shipped weights.

Usage::

    python tools/export_onnx.py [--weights engines/unet.pt] [--out engines/unet.onnx]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

OPSET = 17


def export_onnx(weights: str | Path, out: str | Path, *, opset: int = OPSET) -> Path:
    """Write the ONNX file of ``weights`` to ``out`` and check it; returns ``out``."""
    import onnx
    import torch

    from etemlive.segment.unet import UNetProbabilities, file_sha256, load_unet

    unet, meta = load_unet(weights)
    model = UNetProbabilities(unet).eval()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    x = torch.zeros(1, 1, 64, 64)
    tmp = out.with_name(out.name + ".tmp")
    torch.onnx.export(
        model, (x,), str(tmp), input_names=["image"], output_names=["maps"], opset_version=opset,
        dynamic_axes={"image": {0: "n", 2: "height", 3: "width"}, "maps": {0: "n", 2: "height", 3: "width"}},
        dynamo=False,
    )
    proto = onnx.load(str(tmp))
    for key, value in {
        "etemlive_weights_sha256": file_sha256(weights),
        "etemlive_config": json.dumps(unet.config.__dict__),
        "etemlive_maps": "particle,distance",
        "etemlive_size_multiple": str(unet.config.size_multiple),
        "etemlive_train_steps": str(meta.get("steps", "")),
    }.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Export the U-Net weights to ONNX.")
    p.add_argument("--weights", default=str(ROOT / "engines" / "unet.pt"))
    p.add_argument("--out", default=str(ROOT / "engines" / "unet.onnx"))
    p.add_argument("--opset", type=int, default=OPSET)
    args = p.parse_args(argv)
    path = export_onnx(args.weights, args.out, opset=args.opset)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
