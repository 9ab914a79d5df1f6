"""The compact U-Net (torch): model, loss, weights file. Used for training and export.

Inference never needs this module on a CPU: ``engines/unet.onnx`` runs in ONNX
Runtime (``segment/backends.py``). torch is imported here at module level, so
import this module only when torch is chosen (training, export, torch runners).

The network takes one normalized channel (:func:`etemlive.segment.backends.normalize_frame`)
and predicts two maps per pixel:

0. particle logit (probability after a sigmoid): is this pixel inside a particle;
1. normalized-distance logit: the distance to the particle's border divided by that
   particle's largest distance (0 at the rim, 1 at its centre, 0 outside). It is
   scale-free, so a 4 px and an 80 px particle look alike to the loss, and it
   dips to ~0 at the neck between touching particles, which is where
   :mod:`etemlive.segment.instances` splits them.

Architecture (chosen by measurement, see docs/model.md): 5 resolution levels
(4 max-pools, input padded to a multiple of 16), two 3x3 conv + BatchNorm + ReLU
per level, widths ``base, 2 base, 4 base, 8 base, 16 base``, bilinear-free
transposed-conv upsampling, skip connections by concatenation.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

#: Tag stored in every weights file; a file without it is refused.
WEIGHTS_FORMAT = "etemlive-unet/1"
#: Names of the output channels, in order.
MAP_NAMES = ("particle", "distance")
#: Frames are padded to a multiple of this (2 ** number of pools).
SIZE_MULTIPLE = 16

REBUILD_HINT = (
    "rebuild it with `python tools/train_unet.py --out engines/unet.pt` "
    "(or restore it with `git checkout engines/unet.pt`)"
)


@dataclass(frozen=True)
class UNetConfig:
    """Shape of the network.

    Attributes
    ----------
    base_channels : int
        Width of the first level; level k has ``base_channels * 2**k`` channels.
    levels : int
        Number of resolution levels (``levels - 1`` max-pools).
    in_channels, out_channels : int
        1 normalized image channel in; 2 maps out (:data:`MAP_NAMES`).
    """

    base_channels: int = 8
    levels: int = 5
    in_channels: int = 1
    out_channels: int = 2

    def __post_init__(self) -> None:
        if not (1 <= self.base_channels <= 128):
            raise ValueError(f"base_channels must be 1..128, got {self.base_channels}")
        if not (2 <= self.levels <= 6):
            raise ValueError(f"levels must be 2..6, got {self.levels}")

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this (px)."""
        return 2 ** (self.levels - 1)


def _block(c_in: int, c_out: int) -> nn.Sequential:
    # conv-BN-ReLU twice: BN folds into the conv in ONNX Runtime / TensorRT (free at inference).
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """Compact U-Net: ``(N, 1, H, W)`` normalized image -> ``(N, 2, H, W)`` logits.

    H and W must be multiples of ``config.size_multiple`` (the runners pad).
    """

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or UNetConfig()
        c = [self.config.base_channels * 2**k for k in range(self.config.levels)]
        self.down = nn.ModuleList(
            [_block(self.config.in_channels, c[0])] + [_block(c[k - 1], c[k]) for k in range(1, len(c))]
        )
        self.up = nn.ModuleList(
            [nn.ConvTranspose2d(c[k], c[k - 1], 2, stride=2) for k in range(len(c) - 1, 0, -1)]
        )
        self.dec = nn.ModuleList([_block(2 * c[k - 1], c[k - 1]) for k in range(len(c) - 1, 0, -1)])
        self.head = nn.Conv2d(c[0], self.config.out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for k, block in enumerate(self.down):
            if k:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        skips.pop()
        for up, dec in zip(self.up, self.dec, strict=True):
            x = up(x)
            x = dec(torch.cat([x, skips.pop()], dim=1))
        return self.head(x)


class UNetProbabilities(nn.Module):
    """The inference graph: logits -> probabilities (what every runtime returns)."""

    def __init__(self, unet: UNet) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.unet(x))


def fold_batchnorm(model: UNet) -> UNet:
    """Fold every eval-mode BatchNorm into the convolution before it (in place; returns model).

    ``w' = w * g / sqrt(v + eps)``, ``b' = beta - m * g / sqrt(v + eps)``: the same
    function up to float rounding, with one memory pass less per layer (the
    activations of a 2048^2 frame are hundreds of MB, so the GPU runner is
    memory-bound and this matters).
    """
    for block in list(model.down) + list(model.dec):
        layers = list(block)
        for i, layer in enumerate(layers):
            if isinstance(layer, nn.BatchNorm2d):
                conv = layers[i - 1]
                scale = layer.weight / torch.sqrt(layer.running_var + layer.eps)
                with torch.no_grad():
                    conv.weight.mul_(scale.view(-1, 1, 1, 1))
                    bias = layer.bias - layer.running_mean * scale
                    if conv.bias is None:
                        conv.bias = nn.Parameter(bias.clone())
                    else:
                        conv.bias.add_(bias)
                block[i] = nn.Identity()
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------- loss
def segmentation_loss(
    logits: torch.Tensor, fg: torch.Tensor, dist: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """0.5 soft-Dice + 0.5 BCE on the particle map, plus BCE on the distance map.

    Parameters
    ----------
    logits : Tensor (N, 2, H, W)
        Network output.
    fg : Tensor (N, 1, H, W)
        1 inside particles, 0 outside.
    dist : Tensor (N, 1, H, W)
        Normalized distance target in [0, 1] (0 outside particles).

    Returns
    -------
    loss : Tensor (scalar)
    parts : dict
        ``dice``, ``bce``, ``dist`` as floats (for the loss-curve log).
    """
    p_logit = logits[:, :1].float()
    d_logit = logits[:, 1:2].float()
    prob = torch.sigmoid(p_logit)
    inter = (prob * fg).sum(dim=(1, 2, 3))
    denom = prob.sum(dim=(1, 2, 3)) + fg.sum(dim=(1, 2, 3))
    # +1 smoothing keeps the Dice of an empty tile (no particles) defined and ~0 when empty is predicted.
    dice = 1.0 - ((2.0 * inter + 1.0) / (denom + 1.0)).mean()
    bce = F.binary_cross_entropy_with_logits(p_logit, fg)
    dist_loss = F.binary_cross_entropy_with_logits(d_logit, dist)
    loss = 0.5 * dice + 0.5 * bce + dist_loss
    return loss, {"dice": float(dice.detach()), "bce": float(bce.detach()), "dist": float(dist_loss.detach())}


# ---------------------------------------------------------------- weights file
def save_weights(model: UNet, path: str | Path, *, meta: dict | None = None) -> Path:
    """Write ``model`` (fp32 state dict + config + meta) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32) if v.is_floating_point() else v.detach().cpu()
             for k, v in model.state_dict().items()}
    # meta through JSON: only plain types, so weights_only loading accepts the file
    plain_meta = json.loads(json.dumps(dict(meta or {}), default=str))
    blob = {"format": WEIGHTS_FORMAT, "config": asdict(model.config), "state_dict": state,
            "meta": plain_meta}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)
    return path


def load_unet(path: str | Path, *, map_location: str | torch.device = "cpu") -> tuple[UNet, dict]:
    """Load a weights file written by :func:`save_weights`.

    Returns the model in eval mode and its ``meta`` dict. Raises
    :class:`InputError` (one line naming the file and how to rebuild it) when the
    file is missing, truncated, not a weights file, or does not fit the network.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"U-Net weights not found: {path}; {REBUILD_HINT}")
    try:
        # weights_only: never unpickle arbitrary objects from a weights file.
        blob = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for a corrupt zip / pickle
        raise InputError(
            f"U-Net weights file {path} is corrupt or unreadable ({type(err).__name__}); {REBUILD_HINT}"
        ) from None
    if not isinstance(blob, dict) or blob.get("format") != WEIGHTS_FORMAT:
        raise InputError(f"{path} is not an etemlive U-Net weights file ({WEIGHTS_FORMAT}); {REBUILD_HINT}")
    try:
        model = UNet(UNetConfig(**blob["config"]))
        model.load_state_dict(blob["state_dict"])
    except Exception as err:
        raise InputError(
            f"U-Net weights file {path} does not match the network ({type(err).__name__}); {REBUILD_HINT}"
        ) from None
    for v in model.state_dict().values():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise InputError(f"U-Net weights file {path} holds NaN/inf values; {REBUILD_HINT}")
    model.eval()
    return model, dict(blob.get("meta", {}))


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file (weights provenance in the ONNX metadata and plan cache)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def padded_size(n_px: int, multiple: int = SIZE_MULTIPLE, minimum: int = 32) -> int:
    """Smallest multiple of ``multiple`` that is >= max(n_px, minimum)."""
    return int(math.ceil(max(n_px, minimum) / multiple) * multiple)
