"""PANet: bottom-up path augmentation, adaptive feature pooling, fully-connected fusion.

Paper: Shu Liu, Lu Qi, Haifang Qin, Jianping Shi, Jiaya Jia, "Path Aggregation Network for Instance
Segmentation", CVPR 2018 (arXiv:1803.01534). Official code: https://github.com/ShuLiu1993/PANet
(built on Detectron.pytorch; read at HEAD f055f716a21896dab8907c46c12e216323baefdb, the 2fc head
GroupNorm since dac8628fc4c866e138addc179df9f307ce849945): ``lib/modeling/FPN.py``
(``fpn(..., panet_buttomup=True)``),
``lib/modeling/fast_rcnn_heads.py`` (``roi_Xconv1fc_gn_head_panet``, ``roi_2mlp_head_gn_panet``),
``lib/modeling/mask_rcnn_heads.py`` (``mask_rcnn_fcn_head_v1upXconvs_gn_adp_ff``,
``mask_rcnn_outputs``), ``lib/modeling/model_builder.py`` (``roi_feature_transform(panet=True)``),
``configs/panet/e2e_panet_R-50-FPN_2x_mask.yaml``.

Four zoo modules for torchvision's Mask R-CNN, each written from reading the official code:

* :class:`PAFPN` (``replace`` at ``fpn``): torchvision's top-down ``FeaturePyramidNetwork`` plus
  the bottom-up path; :class:`BottomUpPath` (``after`` at ``fpn``): the bottom-up path alone, on
  the output of the network's own (possibly pretrained) FPN.
* :class:`AdaptiveFeaturePooling` (``replace`` at ``box_roi_pool`` or ``mask_roi_pool``): every
  RoI pooled from every level, one first head layer per level, element-wise max, then the layers
  the levels share. It *absorbs* the head up to the end of those (``box_head.fc6`` and ``fc7`` of
  ``TwoMLPHead``; the whole conv tower ``0..3`` of ``FastRCNNConvFCHead`` and ``MaskRCNNHeads``;
  ``mask_head.0`` of :class:`FullyConnectedFusion`, whose fc branch leaves after conv3), which
  become ``nn.Identity``.
* :class:`FullyConnectedFusion` (``replace`` at ``mask_head``, absorbs ``mask_predictor``): the
  FCN mask branch plus a class-agnostic fc branch added to every class's logits.

Files: ``neck.py`` (:class:`PAFPN`, :class:`BottomUpPath`), ``pooling.py``
(:class:`AdaptiveFeaturePooling`), ``mask_head.py`` (:class:`FullyConnectedFusion`) and
``layers.py`` (the conv/norm layers and constants they share). Importing this package registers
all four in the zoo.

What the official code does (and we follow)
-------------------------------------------
* Bottom-up path (``FPN.py``): ``N2 = P2``; ``N_{i+1} = conv2(conv1_s2(N_i) + P_{i+1})`` with
  3x3 convs (``conv1`` stride 2), each ``Conv(bias=True) -> GroupNorm(32) -> ReLU`` when
  ``FPN.USE_GN`` (the PANet configs set it); *without* GN the official convs are plain
  ``Conv2d`` with no ReLU, although the paper says "ReLU after each convolution layer". Hence
  ``relu=True`` by default (paper, official GN code) and ``relu=False`` for the official no-GN code.
  The downsampling conv reads ``N_i`` after its fusion conv (the recursion runs on outputs).
* The extra coarsest level (P6, torchvision's ``'pool'``): the official ``maxpool_p6``
  (``MaxPool2d(1, stride=2)``) is applied to ``fpn_output_blobs[0]`` *after* the bottom-up path,
  i.e. to **N5**, not P5. Both necks therefore recompute ``'pool'`` from N5 (torchvision's
  ``LastLevelMaxPool`` of the replaced / wrapped FPN subsamples P5). The RPN sees N2..N6, as in the
  official code, where the RPN reads the neck's output.
* GroupNorm: ``get_group_gn`` with Detectron's defaults (``NUM_GROUPS=32``, ``DIM_PER_GP=-1``,
  ``EPSILON=1e-5``): always 32 groups, also for the 128-channel ``mask_conv5_fc``.
* Adaptive feature pooling (``model_builder.roi_feature_transform(panet=True)``): every RoI is
  RoIAligned on every RoI level (P2..P5, not P6) at that level's scale, ``sampling_ratio=2``,
  7x7 (box) / 14x14 (mask); each level has its own first layer, fused by ``torch.max`` after the
  layer's ReLU. Box head in the PANet mask configs: ``roi_Xconv1fc_gn_head_panet`` (4 convs + 1
  fc, fuses after the first conv: ``conv1_head[level]`` = ``Conv(bias=False) -> GN -> ReLU``, then
  3 shared ``Conv -> GN -> ReLU`` and the fc); the ``_det_2fc`` config (commit dac8628, with its
  released model) uses ``roi_2mlp_head_gn_panet``: ``fc1[level]`` = ``Linear -> GN -> ReLU``, max,
  ``fc2`` = ``Linear -> GN -> ReLU`` (the first commit 5154dd5 had the fc1 GN commented out; we
  follow dac8628/HEAD). Mask head: ``mask_conv1[level]``, then the shared ``conv_fcn``.
* Initialisation (``_init_weights``, ``lib/nn/init.py``): FPN and bottom-up convs XavierFill
  (``U(+-sqrt(3 / fan_in))`` = ``kaiming_uniform_(a=1)``, also torchvision's FPN init), bias 0; box
  and mask head convs MSRAFill (kaiming normal, fan_out), bias 0; box-head Linear layers
  XavierFill, bias 0; ``mask_fc`` normal(std 0.01), bias 0; norm layers weight 1, bias 0. We
  use the same fills for every layer we build.
* Fully-connected fusion (``mask_rcnn_fcn_head_v1upXconvs_gn_adp_ff``): conv1 (per level with
  AFP), conv2, conv3; FCN branch conv4 -> deconv 2x2 -> ReLU -> 1x1 per-class conv
  (``mask_rcnn_outputs.classify``); fc branch from conv3: ``mask_conv4_fc`` (3x3, 256),
  ``mask_conv5_fc`` (3x3, 128), ``mask_fc`` = ``Linear(128*14*14, 28*28)`` **followed by ReLU**
  (in the code, not in the paper), reshaped to 1x28x28 and repeated over classes, then added.
  ``mask_fc`` init: normal(std=0.01), bias 0; convs MSRAFill (= kaiming normal, fan_out).

Where we differ from the official code
--------------------------------------
* ``norm="auto"`` (default) uses the normalisation of the part being replaced/extended
  (torchvision v1: none, v2: BatchNorm), so an ablation changes only the PANet structure; the
  official PANet configs are ``norm: gn``, and ``norm: gn`` on every piece gives the official GN
  configuration end to end (neck, box and mask heads). With ``gn`` the layers match the official
  ones parameter for parameter, and the necks and the 2fc box head output for output with copied
  weights (``tests/test_panet.py`` against ``tests/reference_impls.py``).
* torchvision's RoIAlign is the ``aligned=False`` variant its ``MultiScaleRoIAlign`` uses, like
  Detectron's ``RoIAlign``; scales are inferred from feature and image sizes like
  ``MultiScaleRoIAlign`` does. Level count, output size and sampling ratio come from the pooler.
* Adaptive pooling adapts to the head it finds: fuse after ``fc6`` for ``TwoMLPHead`` (the
  official ``_det_2fc`` head; ``fc7`` becomes the official ``fc2``, newly initialised, so a
  pretrained ``fc7`` is not kept), after the first conv for conv heads (official default). The
  shared convs of a conv head are its own blocks (pretrained weights kept) while the norm is
  unchanged, and new ``Conv -> [norm] -> ReLU`` blocks (MSRAFill) for another norm, so ``norm: gn``
  gives the official GN head. The fc of ``FastRCNNConvFCHead`` stays torchvision's (PyTorch's
  ``Linear`` init; official XavierFill), and so does the mask predictor.
* ``norm: bn`` is refused for the fc head (the official one has GroupNorm; BatchNorm1d over the
  sampled RoIs has no counterpart in the official code, torchvision or mmdetection).
* Layers outside the four modules keep torchvision's initialisation: the box predictor, the RPN.

timm has no PANet layers; mmdetection has the neck only (no adaptive pooling, no fully-connected
fusion), and its ``PAFPN`` (``mmdet/models/necks/pafpn.py``) differs from the official code:
* its recursion runs on the *pre-conv* sums: ``inter[i+1] += downsample(inter[i])`` and the outputs
  are ``pafpn_conv(inter[i])`` on the side, so the stride-2 conv reads ``P_i + down(...)``, not
  ``N_i`` (the official code and the paper downsample ``N_i``);
* by default no norm and no activation (``act_cfg=None``) in the bottom-up convs;
* extra levels: max-pool of the last output (N5) like the official code, or extra convs.
"""

from __future__ import annotations

from .layers import GN_GROUPS, norm_of
from .mask_head import FullyConnectedFusion
from .neck import PAFPN, BottomUpPath
from .pooling import AdaptiveFeaturePooling, infer_scale

__all__ = [
    "GN_GROUPS",
    "PAFPN",
    "AdaptiveFeaturePooling",
    "BottomUpPath",
    "FullyConnectedFusion",
    "infer_scale",
    "norm_of",
]
