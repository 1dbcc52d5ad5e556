import pickle

import pytest
import torch
from timm.layers import SEModule

from ffdi.config import ModelConfig
from ffdi.model.networks import WeightsError, build_model, count_se_modules, read_state_dict


def test_plain_and_se_variants():
    plain, se = build_model(ModelConfig()), build_model(ModelConfig(se=True, se_reduction=32))
    assert count_se_modules(plain) == 0
    assert count_se_modules(se) == 8  # one per BasicBlock of ResNet-18
    first = next(m for m in se.modules() if isinstance(m, SEModule))
    assert first.fc1.out_channels == 64 // 32
    assert plain(torch.zeros(2, 3, 32, 32)).shape == (2, 2)


def test_se_keeps_every_pretrained_weight(tmp_path):
    torch.manual_seed(1)
    donor = build_model(ModelConfig())  # stands in for ImageNet weights
    path = tmp_path / "resnet18.pt"
    torch.save(donor.state_dict(), path)

    model = build_model(ModelConfig(se=True, weights=str(path)))
    own, src = model.state_dict(), donor.state_dict()
    for key, value in src.items():
        assert torch.equal(own[key], value), key  # every conv/bn/fc tensor copied
    fresh = set(own) - set(src)
    assert fresh and all(".se." in k for k in fresh)


def test_checkpoint_style_file_and_head_resize(tmp_path):
    donor = build_model(ModelConfig())
    state = donor.state_dict()
    state["fc.weight"] = torch.zeros(1000, 512)  # an ImageNet head
    state["fc.bias"] = torch.zeros(1000)
    torch.save({"model": state, "epoch": 3}, tmp_path / "ckpt.pt")
    model = build_model(ModelConfig(weights=str(tmp_path / "ckpt.pt")))
    assert torch.equal(model.conv1.weight, donor.conv1.weight)
    assert model.fc.weight.shape == (2, 512)


def test_wrong_architecture_weights_are_refused(tmp_path):
    state = build_model(ModelConfig()).state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(3, 3, 3, 3)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(WeightsError, match="layer1.0.conv1.weight"):
        build_model(ModelConfig(weights=str(tmp_path / "bad.pt")))


class Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /tmp/ffdi-pwned",))


def test_malicious_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": Exploit()}, f)
    with pytest.raises(WeightsError, match="refused"):
        read_state_dict(path)


def test_safetensors(tmp_path):
    from safetensors.torch import save_file

    donor = build_model(ModelConfig())
    save_file(donor.state_dict(), tmp_path / "w.safetensors")
    model = build_model(ModelConfig(se=True, weights=str(tmp_path / "w.safetensors")))
    assert torch.equal(model.layer4[1].conv2.weight, donor.layer4[1].conv2.weight)


def test_arch_and_se_errors_name_the_key():
    from ffdi.errors import ConfigError

    with pytest.raises(ConfigError, match="model.arch 'resnet_eighteen' is not a timm model"):
        build_model(ModelConfig(arch="resnet_eighteen"))
    with pytest.raises(ConfigError, match="model.se: true needs a ResNet-family model.arch, got 'convnext_atto'"):
        build_model(ModelConfig(arch="convnext_atto", se=True))


@pytest.mark.parametrize("arch", ["convnext_atto", "efficientnet_b0", "vit_tiny_patch16_224", "coatnet_0_rw_224"])
def test_any_timm_family_keeps_its_backbone_weights_and_gets_a_fresh_head(arch, tmp_path):
    # A saved state dict with a 1000-class head stands in for ImageNet weights.
    torch.manual_seed(1)
    donor = build_model(ModelConfig(arch=arch, num_classes=2), image_size=64)
    state = {k: v.clone() for k, v in donor.state_dict().items()}
    head = donor.default_cfg["classifier"]
    for suffix in ("weight", "bias"):
        state[f"{head}.{suffix}"] = torch.randn(1000, *state[f"{head}.{suffix}"].shape[1:])
    torch.save(state, tmp_path / "w.pt")
    torch.manual_seed(2)
    model = build_model(ModelConfig(arch=arch, weights=str(tmp_path / "w.pt")), image_size=64)
    own = model.state_dict()
    kept = [k for k in own if not k.startswith(head + ".")]
    assert kept and all(torch.equal(own[k], state[k]) for k in kept)
    assert own[f"{head}.weight"].shape[0] == 2  # resized, fresh
    assert model.eval()(torch.zeros(2, 3, 64, 64)).shape == (2, 2)


@pytest.mark.parametrize("kind", ["srm", "npr"])
def test_artefact_input_starts_as_rgb_and_learns_from_the_residual(kind):
    torch.manual_seed(0)
    plain = build_model(ModelConfig()).eval()
    with_input = build_model(ModelConfig(input=f"rgb+{kind}")).eval()
    missing = with_input.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing == ["artefacts.mix.weight"]
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(plain(x), with_input(x), atol=1e-5)  # identity on RGB at the start
    # The residual is what the paper defines, and its weights get a gradient.
    residual = with_input.artefacts.residual(x)
    if kind == "npr":
        up = x[..., ::2, ::2].repeat_interleave(2, -1).repeat_interleave(2, -2)
        assert torch.allclose(residual, x - up)
    else:
        flat = torch.ones(1, 3, 16, 16)  # high-pass: zero on a constant image, away from the border
        assert with_input.artefacts.residual(flat)[..., 2:-2, 2:-2].abs().max() < 1e-6
    with_input.train()
    with_input(x).sum().backward()
    assert with_input.artefacts.mix.weight.grad[:, 3:].abs().sum() > 0
