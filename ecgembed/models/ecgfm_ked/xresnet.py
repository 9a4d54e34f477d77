"""The ECG encoder of ECGFM-KED: a head-less 1-D xresnet101 (``specs/ecgfm-ked.md`` §b).

Re-implemented in plain torch from the spec's table; the original is fastai-v1 based
(``models/xresnet1d_101.py`` of control-spiderman/ECGFM-KED). The module tree mirrors the
published key names, so the released ``ecg_model`` state dict loads with no renaming once
its alias keys are dropped (``load.py``):

    child   layer                                           out, one record of 12 x 1000
    0-2     ConvBN 12->32 (stride 2), 32->32, 32->64, k5    64 x 500
    3       MaxPool1d k3 s2 p1                              64 x 250
    4       stage 1:  3 bottlenecks, mid  64, out 256       256 x 250
    5       stage 2:  4 bottlenecks, mid 128, out 512, /2   512 x 125
    6       stage 3: 23 bottlenecks, mid 128, out 512, /2   512 x 63
    7       stage 4:  3 bottlenecks, mid 192, out 768, /2   768 x 32

Keys: ``<child>.0.weight`` (conv) and ``<child>.1.*`` (BN) for the stem;
``<stage>.<block>.convs.<i>.{0,1}.*`` and ``<stage>.0.idpath.<j>.{0,1}.*`` for the blocks.
The original ``ResBlock`` registers its conv path twice (``convs`` and ``convpath.0``);
here each tensor is owned once.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import KEDConfig


class ConvBN(nn.Sequential):
    """Conv1d (no bias, 'same' padding) -> BatchNorm1d [-> ReLU]; keys ``0.weight``, ``1.*``."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int = 1,
                 act: bool = True, bn_eps: float = 1e-5):
        layers: list[nn.Module] = [
            nn.Conv1d(c_in, c_out, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
            nn.BatchNorm1d(c_out, eps=bn_eps),
        ]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class Bottleneck(nn.Module):
    """fastai ``ResBlock`` with expansion 4: ReLU(convs(x) + idpath(x)).

    convs:  1x1 c_in->mid, k5 mid->mid (stride here), 1x1 mid->c_out (no ReLU).
    idpath: identity, or [AvgPool1d(2, ceil_mode) if stride 2] + [1x1 ConvBN if c_in != c_out].
    The ceil-mode pool divides a last, one-sample window by 1 (PyTorch does the same).
    """

    def __init__(self, c_in: int, mid: int, c_out: int, stride: int, cfg: KEDConfig):
        super().__init__()
        k, eps = cfg.kernel_size, cfg.bn_eps
        self.convs = nn.Sequential(
            ConvBN(c_in, mid, 1, bn_eps=eps),
            ConvBN(mid, mid, k, stride=stride, bn_eps=eps),
            ConvBN(mid, c_out, 1, act=False, bn_eps=eps),
        )
        shortcut: list[nn.Module] = []
        if stride != 1:
            shortcut.append(nn.AvgPool1d(2, stride=2, ceil_mode=True))
        if c_in != c_out:
            shortcut.append(ConvBN(c_in, c_out, 1, act=False, bn_eps=eps))
        self.idpath = nn.Sequential(*shortcut)  # empty Sequential = identity
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.convs(x) + self.idpath(x))


class XResNet1d(nn.Sequential):
    """(B, 12, 1000) float32 mV -> (B, 768, 32) ECG tokens. Children are numbered as in the file."""

    def __init__(self, cfg: KEDConfig = KEDConfig()):
        k, eps = cfg.kernel_size, cfg.bn_eps
        widths = (cfg.n_leads, *cfg.stem_widths)
        stem = [
            ConvBN(widths[i], widths[i + 1], k, stride=2 if i == 0 else 1, bn_eps=eps)
            for i in range(len(cfg.stem_widths))
        ]
        stages = []
        c_in = cfg.stem_widths[-1]
        for i, (mid, depth) in enumerate(zip(cfg.stage_mid_widths, cfg.stage_depths)):
            c_out = mid * cfg.expansion
            blocks = [
                Bottleneck(c_in if j == 0 else c_out, mid, c_out,
                           stride=2 if (j == 0 and i > 0) else 1, cfg=cfg)
                for j in range(depth)
            ]
            stages.append(nn.Sequential(*blocks))
            c_in = c_out
        super().__init__(*stem, nn.MaxPool1d(3, stride=2, padding=1), *stages)
        self.out_channels = c_in
