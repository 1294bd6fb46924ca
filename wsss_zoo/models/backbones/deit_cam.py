"""Single-class-token DeiT encoder of TS-CAM (Gao et al., ICCV 2021).

vasgaowei/TS-CAM ``lib/models/deit.py::TSCAM.forward_features`` on the
repo's ``lib/models/vision_transformer.py`` (timm 0.3.2 ViT): tokens
``[cls, p_1 .. p_P]`` + ``pos_embed`` (1, 1 + N, D), pre-norm timm blocks
(LN eps 1e-6, exact GELU, scale head_dim^-0.5), and the final LayerNorm
applied to ALL tokens. It is :class:`MCTEncoder` with one class token and
``apply_final_norm = True``; only the positional rule is its own.

Positional embeddings: the original never resizes them; its ``PatchEmbed``
asserts that the input is exactly ``img_size`` x ``img_size``. That is the
default here (``pos_embed_resize=None``: other sizes raise ``ValueError``).
``pos_embed_resize='bicubic'`` is a wsss_zoo extension, NOT in the original:
a size-based bicubic resize of the stored grid (timm
``resample_abs_pos_embed``, no antialias) for other patch grids.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from mmseg.registry import MODELS
from ..utils.pos_embed import resize_pos_embed_bicubic
from .mct_vit import MCTEncoder

_POS_EMBED_RESIZE = (None, 'bicubic')


@MODELS.register_module()
class DeiTCAM(MCTEncoder):
    """TS-CAM's DeiT: one class token, final norm applied, attention on
    request.

    Args:
        img_size (int): training (and, by default, only) input size; sets the
            stored patch grid (img_size // patch_size)^2. Default: 224.
        patch_size (int): patch size. Default: 16.
        in_channels (int): image channels. Default: 3.
        embed_dims (int): token dims D. Default: 384 (DeiT-S).
        num_layers (int): transformer layers. Default: 12.
        num_heads (int): attention heads. Default: 6.
        mlp_ratio (float): MLP hidden / D. Default: 4.
        qkv_bias (bool): bias in the qkv projection. Default: True.
        drop_rate (float): dropout after pos-embed, in MLP and projections.
            Default: 0.
        attn_drop_rate (float): attention dropout. Default: 0.
        drop_path_rate (float): stochastic depth, linear 0 -> rate.
            Default: 0.1 (the original's argparse default).
        norm_eps (float): LayerNorm eps. Default: 1e-6.
        pos_embed_resize (str, optional): None: inputs must be exactly
            ``img_size`` x ``img_size`` (the original); 'bicubic': other
            sizes use a size-based bicubic resize of the stored grid
            (extension). Default: None.
        pretrained (str, optional): LOCAL ImageNet DeiT checkpoint (its
            ``head`` / ``head_dist`` are dropped, everything else loaded, as
            the original ``deit_tscam_*`` entry points). Default: None.
        init_cfg (dict, optional): mmengine init config. Default: None.

    ``forward(x, capture_layers)`` returns the dict of :class:`MCTEncoder`:
    ``cls_tokens`` (B, 1, D), ``patch_tokens`` (B, P, D) (both after the final
    norm), ``hw``, ``attn`` {layer: (B, heads, 1 + P, 1 + P)} for
    ``capture_layers`` only, ``num_layers``. (``self.num_classes`` is the
    number of class tokens, 1; object classes live in :class:`TSCAMHead`.)
    """

    apply_final_norm = True

    def __init__(self,
                 img_size: int = 224,
                 patch_size: int = 16,
                 in_channels: int = 3,
                 embed_dims: int = 384,
                 num_layers: int = 12,
                 num_heads: int = 6,
                 mlp_ratio: float = 4,
                 qkv_bias: bool = True,
                 drop_rate: float = 0.,
                 attn_drop_rate: float = 0.,
                 drop_path_rate: float = 0.1,
                 norm_eps: float = 1e-6,
                 pos_embed_resize: Optional[str] = None,
                 pretrained: Optional[str] = None,
                 init_cfg: Optional[dict] = None):
        if pos_embed_resize not in _POS_EMBED_RESIZE:
            raise ValueError(
                f'DeiTCAM: pos_embed_resize must be one of '
                f'{_POS_EMBED_RESIZE}, got {pos_embed_resize!r}')
        if not isinstance(img_size, int) or img_size < patch_size:
            raise ValueError(
                f'DeiTCAM: img_size must be an int >= patch_size '
                f'({patch_size}), got {img_size!r} (the stored positional '
                'grid is square)')
        self.pos_embed_resize = pos_embed_resize
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            in_channels=in_channels,
            embed_dims=embed_dims,
            num_layers=num_layers,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            num_classes=1,  # one class token
            drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate,
            drop_path_rate=drop_path_rate,
            norm_eps=norm_eps,
            pretrained=pretrained,
            init_cfg=init_cfg)

    def _embed_tokens(self, patches: Tensor, img_hw: Tuple[int, int],
                      grid_hw: Tuple[int, int]) -> Tensor:
        """[cls token, patch tokens] + pos_embed, (B, 1 + P, D).

        Args:
            patches (Tensor): patch tokens, (B, P, D).
            img_hw, grid_hw: input (H, W) and patch grid (h, w).
        """
        n = self.grid_size
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        if self.pos_embed_resize is None:
            if tuple(img_hw) != (self.img_size, self.img_size):
                H, W = img_hw
                raise ValueError(
                    f'DeiTCAM: input {H}x{W} does not match img_size '
                    f'{self.img_size}x{self.img_size}; TS-CAM never resizes '
                    'its positional embeddings: resize the images to '
                    f'{self.img_size}x{self.img_size} in the pipeline, or '
                    "set pos_embed_resize='bicubic' (not in the original)")
        elif tuple(grid_hw) != (n, n):
            patch_pos = resize_pos_embed_bicubic(patch_pos, grid_hw)
        cls_tokens = self.cls_token.expand(patches.shape[0], -1, -1)
        tokens = torch.cat([cls_tokens, patches], dim=1)
        return tokens + torch.cat([cls_pos, patch_pos], dim=1)
