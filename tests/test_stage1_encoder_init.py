"""Stage-1 encoder -> stage-2 mmseg ViT initial weights
(``wsss_zoo/converters/stage1_encoder.py``, ``tools/model_converters/
stage1_to_vit.py``)."""
import importlib.util
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.registry import init_default_scope

import wsss_zoo  # noqa: F401
from mmseg.registry import MODELS
from wsss_zoo.converters import stage1_encoder_to_vit

REPO_ROOT = Path(__file__).resolve().parents[1]
TSCAM = 'configs/tscam/tscam_vit-t8_1xb16-2k_synthshapes-96x96.py'
MCT = 'configs/mctformer/mctformer-v2_vit-t8_1xb16-2k_synthshapes-96x96.py'
TRANSCAM = ('configs/transcam/'
            'transcam_conformer-t_1xb16-2k_synthshapes-96x96.py')
GCD = 'configs/weaktr/weaktr-gcd_vit-t8_1xb8-2k_synthshapes-96x96.py'


def build(config, seed=0, **backbone):
    init_default_scope('mmseg')
    cfg = Config.fromfile(str(REPO_ROOT / config))
    cfg.model.backbone.update(backbone)
    torch.manual_seed(seed)
    model = MODELS.build(cfg.model)
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel('WARNING')  # init_weights logs every parameter
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)
    return model.eval()


def randomised(model, seed=1):
    """Random values in every parameter (init values would hide mix-ups of
    e.g. LayerNorm weights and biases)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def test_single_token_encoder_gives_the_same_patch_tokens(tmp_path):
    """TS-CAM's DeiTCAM (one class token, final norm applied) and the mmseg
    ViT initialised from it compute the same patch tokens."""
    stage1 = randomised(build(TSCAM))
    sd, info = stage1_encoder_to_vit({'state_dict': stage1.state_dict()})
    assert info['class_tokens'] == 1 and info['embed_dims'] == 128
    path = tmp_path / 'vit.pth'
    torch.save(dict(state_dict=sd), path)
    # the stage-2 encoder of the WeakTr-GCD synthetic config, with the LN
    # eps of the stage-1 encoder so that the two are the same function
    stage2 = build(GCD, seed=5, norm_cfg=dict(type='LN', eps=1e-6),
                   init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        want = stage1.extract_feat(x, [])['patch_tokens']  # (B, P, D)
        got = stage2.backbone(x)[-1]  # (B, D, h, w)
    got = got.flatten(2).transpose(1, 2)
    err = (got - want).abs().max() / want.abs().max()
    assert err < 1e-5, err
    # and a ViT left at its own init is not (the weights were loaded)
    fresh = build(GCD, seed=5, norm_cfg=dict(type='LN', eps=1e-6))
    with torch.no_grad():
        other = fresh.backbone(x)[-1].flatten(2).transpose(1, 2)
    assert (other - want).abs().max() / want.abs().max() > 1e-2


def test_class_tokens_are_averaged():
    stage1 = randomised(build(MCT))
    state = stage1.state_dict()
    sd, info = stage1_encoder_to_vit(state)  # a bare state dict works too
    T = state['backbone.cls_token'].shape[1]
    assert info['class_tokens'] == T == 5
    assert torch.equal(sd['cls_token'],
                       state['backbone.cls_token'].mean(1, keepdim=True))
    pos = state['backbone.pos_embed']
    assert sd['pos_embed'].shape == (1, 1 + 144, 128)
    assert torch.equal(sd['pos_embed'][:, 0], pos[:, :T].mean(1))
    assert torch.equal(sd['pos_embed'][:, 1:], pos[:, T:])
    # every stage-2 backbone tensor is set, none left over
    stage2 = build(GCD)
    assert set(sd) == set(stage2.backbone.state_dict())
    stage2.backbone.load_state_dict(sd, strict=True)
    assert torch.equal(stage2.backbone.layers[3].ffn.layers[1].weight,
                       state['backbone.blocks.3.mlp.fc2.weight'])


def test_bad_checkpoints_name_the_problem():
    conformer = build(TRANSCAM).state_dict()
    with pytest.raises(ValueError, match='Conformer'):
        stage1_encoder_to_vit({'state_dict': conformer})
    with pytest.raises(ValueError, match='missing keys backbone'):
        stage1_encoder_to_vit({'state_dict': {'decode_head.w': torch.ones(1)}})
    state = build(MCT).state_dict()
    state['backbone.extra.weight'] = torch.ones(1)
    with pytest.raises(ValueError, match='extra'):
        stage1_encoder_to_vit(state)


def test_cli(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        'stage1_to_vit',
        REPO_ROOT / 'tools/model_converters/stage1_to_vit.py')
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    src, dst = tmp_path / 'iter_1.pth', tmp_path / 'out/vit.pth'
    torch.save(dict(state_dict=build(MCT).state_dict(), meta={}), src)
    tool.main([str(src), str(dst)])
    out = torch.load(dst, weights_only=True)
    assert out['meta']['info']['class_tokens'] == 5
    assert 'cls_token' in out['state_dict']
    assert 'init_cfg.checkpoint' in capsys.readouterr().out
    with pytest.raises(SystemExit, match='no such file'):
        tool.main([str(tmp_path / 'missing.pth'), str(dst)])
