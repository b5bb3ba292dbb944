"""Independent functional transcriptions of official forwards, for the zoo fidelity tests.

Written from reading the official code (not copied from it): each function takes a zoo module only
as a bag of tensors (weights, BN statistics) and recomputes the official forward with
``torch.nn.functional``, in eval mode. Also the official parameter counts.

* CoordAtt: github.com/Andrew-Qibin/CoordAttention (houqb/CoordAttention), ``coordatt.py``.
* CGAFusion: github.com/cecret3350/DEA-Net, ``code/model/modules/cga.py`` and ``fusion.py``.
* PANet: github.com/ShuLiu1993/PANet, ``lib/modeling/FPN.py``, ``fast_rcnn_heads.py``,
  ``mask_rcnn_heads.py``: plain ``nn.Module`` transcriptions of the official layer definitions
  (same layer types, order, widths, bias flags; the bottom-up forward follows the official loop).
* CBAM: github.com/Jongchan/attention-module ``MODELS/cbam.py`` (+ the init loop of
  ``MODELS/model_resnet.py``); ECA: github.com/BangguWu/ECANet ``models/eca_module.py``; GCNet:
  github.com/open-mmlab/mmcv ``mmcv/cnn/bricks/context_block.py``: module transcriptions (train
  mode too) and maps of their state-dict keys onto timm's.
* Gather-Excite: Hu, Shen, Albanie, Sun, Vedaldi, NeurIPS 2018, arXiv:1810.12348 (the official
  GENet code is partial Caffe): the paper's GE-θ / GE-θ⁺ forward on timm's state-dict layout
  (``gather.conv<i>`` / ``gather.norm<i>``, ``mlp.fc1`` / ``mlp.fc2``), as a function of the tensors.

Also :func:`perturbed`, the tests' one way to move weights and BN statistics off their init.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def perturbed(m: nn.Module, scale: float, bn_stats: bool = True) -> nn.Module:
    """``m`` with ``scale * randn`` added to every parameter and (``bn_stats``) every BatchNorm's
    running mean drawn from N(0, 0.2) and variance from U(0.5, 1.5), in that order, so outputs
    depend on every weight and statistic (eval and train). Returns ``m`` (changed in place)."""
    with torch.no_grad():
        for p in m.parameters():
            p.add_(scale * torch.randn_like(p))
        if bn_stats:
            for bn in m.modules():
                if isinstance(bn, nn.modules.batchnorm._BatchNorm):
                    bn.running_mean.normal_(0.0, 0.2)
                    bn.running_var.uniform_(0.5, 1.5)
    return m


def _bn_eval(x: Tensor, bn: nn.BatchNorm2d) -> Tensor:
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False, eps=bn.eps)


def _h_swish(x: Tensor) -> Tensor:
    # official h_swish: x * h_sigmoid(x), h_sigmoid = relu6(x + 3) / 6
    return x * (F.relu6(x + 3.0) / 6.0)


# --------------------------------------------------------------------------------------------
# Coordinate Attention
# --------------------------------------------------------------------------------------------
def coordatt_official_param_count(inp: int, oup: int, reduction: int = 32) -> int:
    mip = max(8, inp // reduction)
    conv1 = inp * mip + mip
    bn1 = 2 * mip
    conv_hw = 2 * (mip * oup + oup)
    return conv1 + bn1 + conv_hw


def coordatt_official_forward(m: nn.Module, x: Tensor) -> Tensor:
    """Official CoordAtt forward (eval), using ``m.conv1``, ``m.bn1``, ``m.conv_h``, ``m.conv_w`` tensors."""
    _n, _c, h, w = x.shape
    x_h = F.adaptive_avg_pool2d(x, (h, 1))  # pool_h: AdaptiveAvgPool2d((None, 1)) -> [n, c, h, 1]
    x_w = F.adaptive_avg_pool2d(x, (1, w)).permute(0, 1, 3, 2)  # pool_w then permute -> [n, c, w, 1]
    y = torch.cat([x_h, x_w], dim=2)
    y = F.conv2d(y, m.conv1.weight, m.conv1.bias)
    y = _bn_eval(y, m.bn1)
    y = _h_swish(y)
    y_h, y_w = y[:, :, :h], y[:, :, h:]
    y_w = y_w.permute(0, 1, 3, 2)
    a_h = torch.sigmoid(F.conv2d(y_h, m.conv_h.weight, m.conv_h.bias))
    a_w = torch.sigmoid(F.conv2d(y_w, m.conv_w.weight, m.conv_w.bias))
    return x * a_w * a_h


COORDATT_OFFICIAL_KEYS = {
    "conv1.weight",
    "conv1.bias",
    "bn1.weight",
    "bn1.bias",
    "bn1.running_mean",
    "bn1.running_var",
    "bn1.num_batches_tracked",
    "conv_h.weight",
    "conv_h.bias",
    "conv_w.weight",
    "conv_w.bias",
}


# --------------------------------------------------------------------------------------------
# DEA-Net CGAFusion
# --------------------------------------------------------------------------------------------
def cgafusion_official_param_count(dim: int, reduction: int = 8) -> int:
    sa = 2 * 7 * 7 + 1  # Conv2d(2, 1, 7)
    hid = dim // reduction
    ca = (dim * hid + hid) + (hid * dim + dim)  # 1x1 down, 1x1 up, both with bias
    pa = dim * 2 * 7 * 7 + dim  # Conv2d(2*dim, dim, 7, groups=dim): 2 inputs per output channel
    conv = dim * dim + dim
    return sa + ca + pa + conv


CGAFUSION_OFFICIAL_KEYS = {
    "sa.sa.weight",
    "sa.sa.bias",
    "ca.ca.0.weight",
    "ca.ca.0.bias",
    "ca.ca.2.weight",
    "ca.ca.2.bias",
    "pa.pa2.weight",
    "pa.pa2.bias",
    "conv.weight",
    "conv.bias",
}


def _conv_reflect(x: Tensor, conv: nn.Conv2d) -> Tensor:
    p = conv.weight.shape[-1] // 2
    return F.conv2d(F.pad(x, (p, p, p, p), mode="reflect"), conv.weight, conv.bias, groups=conv.groups)


def cgafusion_official_forward(m: nn.Module, x: Tensor, y: Tensor, sigmoids: int = 2) -> Tensor:
    """Official CGAFusion forward, ``sigmoids=2`` as in the code (1 = the paper's formula)."""
    initial = x + y
    # ChannelAttention: GAP -> 1x1 -> ReLU -> 1x1
    g = initial.mean(dim=(2, 3), keepdim=True)
    cattn = F.conv2d(
        F.relu(F.conv2d(g, m.ca.ca[0].weight, m.ca.ca[0].bias)), m.ca.ca[2].weight, m.ca.ca[2].bias
    )
    # SpatialAttention: reflect 7x7 conv on [mean, max] over channels
    s_in = torch.cat([initial.mean(dim=1, keepdim=True), initial.max(dim=1, keepdim=True)[0]], dim=1)
    sattn = _conv_reflect(s_in, m.sa.sa)
    pattn1 = sattn + cattn
    # PixelAttention: channel interleave [initial_0, pattn1_0, initial_1, ...]
    # (einops b c t h w -> b (c t) h w)
    b, c, h, w = initial.shape
    inter = torch.cat([initial.unsqueeze(2), pattn1.unsqueeze(2)], dim=2).reshape(b, 2 * c, h, w)
    z = _conv_reflect(inter, m.pa.pa2)
    for _ in range(sigmoids):
        z = torch.sigmoid(z)
    result = initial + z * x + (1 - z) * y
    return F.conv2d(result, m.conv.weight, m.conv.bias)


# --------------------------------------------------------------------------------------------
# PANet (github.com/ShuLiu1993/PANet): layer-by-layer transcriptions of the official definitions
# --------------------------------------------------------------------------------------------
# Detectron defaults: GROUP_NORM.NUM_GROUPS = 32, DIM_PER_GP = -1 (so get_group_gn(dim) == 32),
# EPSILON = 1e-5. The official PANet heads exist only with GroupNorm; for ``use_gn=False`` these
# transcriptions use the official non-GN definitions of the same layers (``roi_Xconv1fc_head``,
# ``mask_rcnn_fcn_head_v1upXconvs``: Conv2d with bias, ReLU, no norm), as the FPN does.
PANET_GN_GROUPS = 32


def _panet_gn(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(PANET_GN_GROUPS, c, eps=1e-5)


def _panet_head_conv(cin: int, cout: int, use_gn: bool) -> nn.Sequential:
    # fast_rcnn_heads / mask_rcnn_heads: Conv2d(3, 1, 1, bias=False) + GN + ReLU (GN variant),
    # Conv2d(3, 1, 1) + ReLU (non-GN variant)
    if use_gn:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, 1, 1, bias=False), _panet_gn(cout), nn.ReLU(inplace=True)
        )
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1), nn.ReLU(inplace=True))


class PanetOfficialFPN(nn.Module):
    """``FPN.fpn(conv_body, level_info, panet_buttomup=True)`` without the conv body.

    ``dims_lateral`` is in the official (coarsest first) order, e.g. ``[2048, 1024, 512, 256]``.
    ``forward`` takes the backbone blobs finest first ``[C2, C3, C4, C5]`` and returns the official
    ``fpn_output_blobs`` order, coarsest first: ``[P6 (maxpool_p6), N5, N4, N3, N2]``.
    """

    def __init__(
        self, dims_lateral: list[int], fpn_dim: int = 256, use_gn: bool = True, panet_buttomup: bool = True
    ) -> None:
        super().__init__()
        self.use_gn, self.panet_buttomup = use_gn, panet_buttomup
        self.num_backbone_stages = len(dims_lateral)
        if use_gn:
            self.conv_top = nn.Sequential(
                nn.Conv2d(dims_lateral[0], fpn_dim, 1, 1, 0, bias=False), _panet_gn(fpn_dim)
            )
        else:
            self.conv_top = nn.Conv2d(dims_lateral[0], fpn_dim, 1, 1, 0)
        self.topdown_lateral_modules = nn.ModuleList()
        for i in range(self.num_backbone_stages - 1):  # topdown_lateral_module: only conv_lateral has weights
            lateral = nn.Module()
            if use_gn:
                lateral.conv_lateral = nn.Sequential(
                    nn.Conv2d(dims_lateral[i + 1], fpn_dim, 1, 1, 0, bias=False), _panet_gn(fpn_dim)
                )
            else:
                lateral.conv_lateral = nn.Conv2d(dims_lateral[i + 1], fpn_dim, 1, 1, 0)
            self.topdown_lateral_modules.append(lateral)
        self.posthoc_modules = nn.ModuleList()
        for _ in range(self.num_backbone_stages):
            if use_gn:
                self.posthoc_modules.append(
                    nn.Sequential(nn.Conv2d(fpn_dim, fpn_dim, 3, 1, 1, bias=False), _panet_gn(fpn_dim))
                )
            else:
                self.posthoc_modules.append(nn.Conv2d(fpn_dim, fpn_dim, 3, 1, 1))
        if panet_buttomup:
            self.panet_buttomup_conv1_modules = nn.ModuleList()
            self.panet_buttomup_conv2_modules = nn.ModuleList()
            for _ in range(self.num_backbone_stages - 1):
                if use_gn:  # note: bias=True next to GN, and ReLU, in the official code
                    self.panet_buttomup_conv1_modules.append(
                        nn.Sequential(
                            nn.Conv2d(fpn_dim, fpn_dim, 3, 2, 1, bias=True),
                            _panet_gn(fpn_dim),
                            nn.ReLU(inplace=True),
                        )
                    )
                    self.panet_buttomup_conv2_modules.append(
                        nn.Sequential(
                            nn.Conv2d(fpn_dim, fpn_dim, 3, 1, 1, bias=True),
                            _panet_gn(fpn_dim),
                            nn.ReLU(inplace=True),
                        )
                    )
                else:  # no ReLU in the official non-GN bottom-up convs
                    self.panet_buttomup_conv1_modules.append(nn.Conv2d(fpn_dim, fpn_dim, 3, 2, 1))
                    self.panet_buttomup_conv2_modules.append(nn.Conv2d(fpn_dim, fpn_dim, 3, 1, 1))
        self.maxpool_p6 = nn.MaxPool2d(kernel_size=1, stride=2, padding=0)

    def forward(self, conv_body_blobs: list[Tensor]) -> list[Tensor]:
        fpn_inner_blobs = [self.conv_top(conv_body_blobs[-1])]
        for i in range(self.num_backbone_stages - 1):
            lat = self.topdown_lateral_modules[i].conv_lateral(conv_body_blobs[-(i + 2)])
            td = F.interpolate(fpn_inner_blobs[-1], scale_factor=2, mode="nearest")
            fpn_inner_blobs.append(lat + td)
        fpn_output_blobs: list[Tensor] = []
        fpn_middle_blobs = [
            self.posthoc_modules[i](fpn_inner_blobs[i]) for i in range(self.num_backbone_stages)
        ]
        if not self.panet_buttomup:
            fpn_output_blobs = fpn_middle_blobs
        else:
            fpn_output_blobs.append(fpn_middle_blobs[-1])
            for i in range(2, self.num_backbone_stages + 1):
                tmp = self.panet_buttomup_conv1_modules[i - 2](fpn_output_blobs[0])
                tmp = tmp + fpn_middle_blobs[self.num_backbone_stages - i]
                tmp = self.panet_buttomup_conv2_modules[i - 2](tmp)
                fpn_output_blobs.insert(0, tmp)
        fpn_output_blobs.insert(0, self.maxpool_p6(fpn_output_blobs[0]))
        return fpn_output_blobs

    def bottom_up_parameters(self) -> int:
        mods = list(self.panet_buttomup_conv1_modules) + list(self.panet_buttomup_conv2_modules)
        return sum(p.numel() for m in mods for p in m.parameters())


class PanetOfficialBoxHead(nn.Module):
    """``fast_rcnn_heads.roi_Xconv1fc_gn_head_panet`` (ShuLiu1993/PANet HEAD f055f71,
    lib/modeling/fast_rcnn_heads.py; NUM_STACKED_CONVS=4, CONV_HEAD_DIM=256, MLP_HEAD_DIM=1024,
    ROI_XFORM_RESOLUTION=7, 4 RoI levels). ``convs`` groups the official flat conv/GN/ReLU list
    per conv (same parameters in the same order)."""

    def __init__(
        self,
        dim_in: int = 256,
        hidden_dim: int = 256,
        fc_dim: int = 1024,
        roi_size: int = 7,
        num_stacked_convs: int = 4,
        num_levels: int = 4,
        use_gn: bool = True,
    ) -> None:
        super().__init__()
        convs = []
        for _ in range(
            num_stacked_convs - 1
        ):  # official loop: the first takes dim_in, then dim_in = hidden_dim
            convs.append(_panet_head_conv(dim_in, hidden_dim, use_gn))
            dim_in = hidden_dim
        self.convs = nn.Sequential(*convs)
        self.fc = nn.Linear(dim_in * roi_size * roi_size, fc_dim)
        # conv1_head is built after the loop, so it takes the updated dim_in (== hidden_dim)
        self.conv1_head = nn.ModuleList(
            _panet_head_conv(dim_in, hidden_dim, use_gn) for _ in range(num_levels)
        )

    def forward(self, x: list[Tensor]) -> Tensor:
        """``x``: the RoI features pooled on every level; official forward (HEAD f055f71)."""
        x = list(x)
        for i in range(len(x)):
            x[i] = self.conv1_head[i](x[i])
        for i in range(1, len(x)):
            x[0] = torch.max(x[0], x[i])
        x0 = self.convs(x[0])
        return F.relu(self.fc(x0.view(x0.size(0), -1)), inplace=True)


class PanetOfficial2MLPHead(nn.Module):
    """``fast_rcnn_heads.roi_2mlp_head_gn_panet`` as of ShuLiu1993/PANet commit dac8628 (unchanged at
    HEAD f055f71; lib/modeling/fast_rcnn_heads.py), the head of the released ``_det_2fc`` model:
    per-level ``fc1[i]`` = Linear -> GroupNorm(32) -> ReLU, element-wise max, ``fc2`` = Linear ->
    GroupNorm(32) -> ReLU; ``_init_weights``: every Linear XavierFill (lib/nn/init.py), bias 0.
    The first commit 5154dd5 had the fc1 GroupNorm commented out. ``use_gn=False`` drops both
    GroupNorms (no official analogue: only for the no-GN parameter count)."""

    def __init__(
        self,
        dim_in: int = 256,
        hidden_dim: int = 1024,
        roi_size: int = 7,
        num_levels: int = 4,
        use_gn: bool = True,
    ) -> None:
        super().__init__()

        def fc(fin: int) -> nn.Sequential:
            gn = [_panet_gn(hidden_dim)] if use_gn else []
            return nn.Sequential(nn.Linear(fin, hidden_dim), *gn, nn.ReLU(inplace=True))

        self.fc1 = nn.ModuleList(fc(dim_in * roi_size**2) for _ in range(num_levels))
        self.fc2 = fc(hidden_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        def _init(m: nn.Module) -> None:
            if isinstance(m, nn.Linear):  # mynn.init.XavierFill: U(-s, s), s = sqrt(3 / fan_in)
                fan_in = m.weight.numel() / m.weight.shape[0]
                scale = math.sqrt(3 / fan_in)
                nn.init.uniform_(m.weight, -scale, scale)
                nn.init.constant_(m.bias, 0)

        self.apply(_init)

    def forward(self, x: list[Tensor]) -> Tensor:
        """``x``: the RoI features pooled on every level (``roi_xform(..., panet=True)``)."""
        x = list(x)
        batch_size = x[0].size(0)
        for i in range(len(x)):
            x[i] = self.fc1[i](x[i].view(batch_size, -1))
        for i in range(1, len(x)):
            x[0] = torch.max(x[0], x[i])
        return self.fc2(x[0])


class PanetOfficialMaskHeadFF(nn.Module):
    """``mask_rcnn_heads.mask_rcnn_fcn_head_v1upXconvs_gn_adp_ff`` (ShuLiu1993/PANet HEAD f055f71,
    lib/modeling/mask_rcnn_heads.py; num_convs=4, DIM_REDUCED=256,
    ROI_XFORM_RESOLUTION=14, RESOLUTION=28) plus ``mask_rcnn_outputs.classify`` (1x1 conv to the
    classes; CLS_SPECIFIC_MASK, UPSAMPLE_RATIO=1: no extra upsample layer)."""

    def __init__(
        self,
        num_classes: int,
        dim_in: int = 256,
        dim_inner: int = 256,
        roi_xform: int = 14,
        resolution: int = 28,
        num_levels: int = 4,
        use_gn: bool = True,
    ) -> None:
        super().__init__()
        conv_fcn = []
        for _ in range(2):  # official loop: the first takes dim_in, then dim_in = dim_inner
            conv_fcn.append(_panet_head_conv(dim_in, dim_inner, use_gn))
            dim_in = dim_inner
        self.conv_fcn = nn.Sequential(*conv_fcn)
        self.mask_conv1 = nn.ModuleList(
            _panet_head_conv(dim_in, dim_inner, use_gn) for _ in range(num_levels)
        )
        self.mask_conv4 = _panet_head_conv(dim_in, dim_inner, use_gn)
        self.mask_conv4_fc = _panet_head_conv(dim_in, dim_inner, use_gn)
        half = int(dim_inner / 2)
        if use_gn:  # official: GroupNorm(get_group_gn(dim_inner) = 32, dim_inner / 2)
            self.mask_conv5_fc = nn.Sequential(
                nn.Conv2d(dim_in, half, 3, 1, 1, bias=False), _panet_gn(half), nn.ReLU(inplace=True)
            )
        else:
            self.mask_conv5_fc = nn.Sequential(nn.Conv2d(dim_in, half, 3, 1, 1), nn.ReLU(inplace=True))
        self.mask_fc = nn.Sequential(
            nn.Linear(half * roi_xform**2, resolution**2, bias=True), nn.ReLU(inplace=True)
        )
        self.upconv = nn.ConvTranspose2d(dim_inner, dim_inner, 2, 2, 0)
        self.classify = nn.Conv2d(dim_inner, num_classes, 1, 1, 0)  # mask_rcnn_outputs
        self.num_classes, self.resolution = num_classes, resolution

    def forward(self, x: list[Tensor]) -> Tensor:
        """``x``: the RoI features pooled on every level; the official head forward (HEAD f055f71)
        and ``mask_rcnn_outputs.forward`` in training mode (logits, no sigmoid; UPSAMPLE_RATIO 1)."""
        x = list(x)
        for i in range(len(x)):
            x[i] = self.mask_conv1[i](x[i])
        for i in range(1, len(x)):
            x[0] = torch.max(x[0], x[i])
        x0 = self.conv_fcn(x[0])
        batch_size = x0.size(0)
        x_fcn = F.relu(self.upconv(self.mask_conv4(x0)), inplace=True)
        x_ff = self.mask_fc(self.mask_conv5_fc(self.mask_conv4_fc(x0)).view(batch_size, -1))
        out = self.classify(x_fcn)
        ff = x_ff.view(-1, 1, self.resolution, self.resolution).repeat(1, self.num_classes, 1, 1)
        return out + ff


def panet_param_count(module: nn.Module, *names: str) -> int:
    """Parameters of ``module`` (or of its named children only)."""
    mods = [module] if not names else [getattr(module, n) for n in names]
    return sum(p.numel() for m in mods for p in m.parameters())


# --------------------------------------------------------------------------------------------
# CBAM, ECA, GCNet: module transcriptions of the official layers (same layer types, order,
# widths, bias flags and initialisation), with the maps of their state-dict keys onto timm's.
# --------------------------------------------------------------------------------------------
class CbamOfficial(nn.Module):
    """``CBAM(gate_channels, reduction_ratio)`` of Jongchan/attention-module ``MODELS/cbam.py``
    @ c06383c514ab0032d044cc6fcd8c8207ea222ea7 (pool types avg and max, spatial gate on)."""

    def __init__(self, gate_channels: int, reduction_ratio: int = 16) -> None:
        super().__init__()
        hidden = gate_channels // reduction_ratio
        # ChannelGate.mlp = Sequential(Flatten, Linear, ReLU, Linear): indices 1 and 3 hold weights
        self.ChannelGate = nn.Module()
        self.ChannelGate.mlp = nn.Sequential(
            nn.Flatten(), nn.Linear(gate_channels, hidden), nn.ReLU(), nn.Linear(hidden, gate_channels)
        )
        # SpatialGate.spatial = BasicConv(2, 1, 7, padding=3, relu=False): conv (no bias) + BN(momentum 0.01)
        self.SpatialGate = nn.Module()
        self.SpatialGate.spatial = nn.Module()
        self.SpatialGate.spatial.conv = nn.Conv2d(2, 1, 7, stride=1, padding=3, bias=False)
        self.SpatialGate.spatial.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01, affine=True)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[2], x.shape[3]
        mlp = self.ChannelGate.mlp
        att = mlp(F.avg_pool2d(x, (h, w), stride=(h, w))) + mlp(F.max_pool2d(x, (h, w), stride=(h, w)))
        x = x * torch.sigmoid(att).unsqueeze(2).unsqueeze(3).expand_as(x)
        pooled = torch.cat((torch.max(x, 1)[0].unsqueeze(1), torch.mean(x, 1).unsqueeze(1)), dim=1)
        spatial = self.SpatialGate.spatial
        return x * torch.sigmoid(spatial.bn(spatial.conv(pooled)))


def cbam_official_init(module: nn.Module) -> None:
    """The official ``ResidualNet`` initialisation loop (``MODELS/model_resnet.py``, ResNet.__init__)
    over the module's state dict: 'conv' weights kaiming_normal fan_out, 'bn' weights 1 except
    under 'SpatialGate' 0, every bias 0 (the Linear weights keep PyTorch's default)."""
    state = module.state_dict()
    for key in state:
        if key.split(".")[-1] == "weight":
            if "conv" in key:
                nn.init.kaiming_normal_(state[key], mode="fan_out")
            if "bn" in key:
                state[key][...] = 0 if "SpatialGate" in key else 1
        elif key.split(".")[-1] == "bias":
            state[key][...] = 0


def cbam_official_to_timm(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """An official CBAM state dict as timm ``CbamModule`` keys (spatial input order (max, mean) kept)."""
    out = {}
    for key, value in state.items():
        if key.startswith("ChannelGate.mlp."):
            index, leaf = key.split(".")[2:]
            value = value.reshape(*value.shape, 1, 1) if leaf == "weight" else value
            out[f"channel.fc{1 if index == '1' else 2}.{leaf}"] = value
        else:
            out[key.replace("SpatialGate.spatial.", "spatial.conv.")] = value
    return out


class EcaOfficial(nn.Module):
    """``eca_layer(channel, k_size)`` of BangguWu/ECANet ``models/eca_module.py`` @ b332f6b3e6e2afe8a3287dc8ee8440a0fbec74c4
    (``channel`` is unused there too)."""

    def __init__(self, channel: int, k_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, kernel_size=k_size, padding=(k_size - 1) // 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        y = F.adaptive_avg_pool2d(x, 1)
        y = self.conv(y.squeeze(-1).transpose(-1, -2)).transpose(-1, -2).unsqueeze(-1)
        return x * torch.sigmoid(y).expand_as(x)


class ContextBlockOfficial(nn.Module):
    """``ContextBlock(in_channels, ratio, pooling_type, fusion_types)`` of open-mmlab/mmcv
    ``mmcv/cnn/bricks/context_block.py`` @ a8073c74bf83d62ec36a103f835faa4837fb6585, with its
    ``reset_parameters`` (mmengine ``kaiming_init(mode='fan_in')``: normal, relu gain, bias 0;
    ``last_zero_init``: the last conv of each branch weight and bias 0)."""

    def __init__(
        self,
        in_channels: int,
        ratio: float,
        pooling_type: str = "att",
        fusion_types: tuple = ("channel_add",),
    ) -> None:
        super().__init__()
        self.planes = int(in_channels * ratio)
        self.pooling_type = pooling_type
        if pooling_type == "att":
            self.conv_mask = nn.Conv2d(in_channels, 1, kernel_size=1)
            nn.init.kaiming_normal_(self.conv_mask.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(self.conv_mask.bias)
        for fusion in ("channel_add", "channel_mul"):
            branch = None
            if fusion in fusion_types:
                branch = nn.Sequential(
                    nn.Conv2d(in_channels, self.planes, kernel_size=1),
                    nn.LayerNorm([self.planes, 1, 1]),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(self.planes, in_channels, kernel_size=1),
                )
                nn.init.zeros_(branch[-1].weight)
                nn.init.zeros_(branch[-1].bias)
            setattr(self, f"{fusion}_conv", branch)

    def forward(self, x: Tensor) -> Tensor:
        batch, channel, height, width = x.size()
        if self.pooling_type == "att":
            mask = F.softmax(self.conv_mask(x).view(batch, 1, height * width), dim=2).unsqueeze(-1)
            context = torch.matmul(x.view(batch, channel, height * width).unsqueeze(1), mask)
            context = context.view(batch, channel, 1, 1)
        else:
            context = F.adaptive_avg_pool2d(x, 1)
        out = x
        if self.channel_mul_conv is not None:
            out = out * torch.sigmoid(self.channel_mul_conv(context))
        if self.channel_add_conv is not None:
            out = out + self.channel_add_conv(context)
        return out


def context_block_to_timm(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """An mmcv ContextBlock state dict as timm ``GlobalContext`` keys (LayerNorm weights flattened)."""
    out = {}
    for key, value in state.items():
        if key.startswith("conv_mask."):
            out[key.replace("conv_mask.", "conv_attn.")] = value
            continue
        branch, index, leaf = key.split(".")
        prefix = "mlp_add" if branch == "channel_add_conv" else "mlp_scale"
        name = {"0": "fc1", "1": "norm", "3": "fc2"}[index]
        out[f"{prefix}.{name}.{leaf}"] = value.flatten() if name == "norm" else value
    return out


# --------------------------------------------------------------------------------------------
# Gather-Excite (GE-θ, GE-θ⁺; timm's state-dict layout)
# --------------------------------------------------------------------------------------------
def gather_excite_forward(state: dict[str, Tensor], x: Tensor, extent: int, eps: float = 1e-5) -> Tensor:
    """GE with a parametric gather (eval): ``x * sigmoid(excite(gather(x)))`` upsampled to x's size.

    The gather (the paper's GE-θ) is ``log2(extent)`` depthwise 3x3 stride-2 convs (padding 1, no
    bias), each followed by BN, with a ReLU between them; at global extent (``extent=0``) one
    depthwise conv whose kernel is the whole map, padded by ``(k - 1) // 2`` per side as timm pads
    it (the paper's global gather has no padding and gives one value per channel). The excite is the
    1x1-conv MLP fc1 -> ReLU -> fc2 (GE-θ⁺) when ``state`` has ``mlp.fc1.weight``, else nothing
    (GE-θ). The gate is resized to x's size by nearest-neighbour interpolation.
    """
    size = x.shape[-2:]
    n_convs = 1 if extent == 0 else int(math.log2(extent))
    g = x
    for i in range(1, n_convs + 1):
        w = state[f"gather.conv{i}.weight"]
        kh, kw = w.shape[-2:]
        stride = 1 if extent == 0 else 2
        g = F.conv2d(g, w, None, stride, ((kh - 1) // 2, (kw - 1) // 2), groups=w.shape[0])
        norm = [state[f"gather.norm{i}.{k}"] for k in ("running_mean", "running_var", "weight", "bias")]
        g = F.batch_norm(g, *norm, training=False, eps=eps)
        if i < n_convs:
            g = F.relu(g)
    if "mlp.fc1.weight" in state:
        g = F.conv2d(g, state["mlp.fc1.weight"], state["mlp.fc1.bias"])
        g = F.conv2d(F.relu(g), state["mlp.fc2.weight"], state["mlp.fc2.bias"])
    if g.shape[-2:] != (1, 1):
        g = F.interpolate(g, size=size, mode="nearest")
    return x * torch.sigmoid(g)
