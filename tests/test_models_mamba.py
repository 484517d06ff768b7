"""The Mamba block against a plain sequential selective scan; the sensor modulator's GRU variant."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from weldfilm.methods.causal_film.film import SensorModulator, film
from weldfilm.methods.causal_film.mamba import MambaBlock, scan_implementation


def reference_mamba(mixer, x: torch.Tensor) -> torch.Tensor:
    """Mamba (Gu & Dao) written out: in_proj -> causal depthwise conv -> SiLU -> selective scan -> gate -> out_proj."""
    batch, length, _ = x.shape
    inner, state = mixer.A_log.shape
    rank = mixer.dt_proj.in_features
    xz = x @ mixer.in_proj.weight.T
    u, z = xz[..., :inner], xz[..., inner:]
    kernel = mixer.conv1d.weight[:, 0]  # (inner, d_conv)
    d_conv = kernel.shape[1]
    padded = F.pad(u.transpose(1, 2), (d_conv - 1, 0))
    conv = torch.stack([(padded[:, :, t:t + d_conv] * kernel).sum(-1) for t in range(length)], dim=-1)
    u = F.silu(conv + mixer.conv1d.bias[:, None]).transpose(1, 2)  # (B, L, inner)
    projected = u @ mixer.x_proj.weight.T
    dt_low, b_in, c_in = projected[..., :rank], projected[..., rank:rank + state], projected[..., rank + state:]
    dt = F.softplus(dt_low @ mixer.dt_proj.weight.T + mixer.dt_proj.bias)  # (B, L, inner)
    a = -torch.exp(mixer.A_log)  # (inner, state)
    h = torch.zeros(batch, inner, state)
    outputs = []
    for t in range(length):
        h = torch.exp(dt[:, t, :, None] * a) * h + dt[:, t, :, None] * b_in[:, t, None, :] * u[:, t, :, None]
        outputs.append((h * c_in[:, t, None, :]).sum(-1) + mixer.D * u[:, t])
    y = torch.stack(outputs, dim=1) * F.silu(z)
    return y @ mixer.out_proj.weight.T


def test_mamba_block_matches_sequential_selective_scan():
    torch.manual_seed(0)
    block = MambaBlock(8).eval()
    with torch.no_grad():
        for parameter in block.parameters():  # random weights everywhere, not just the init
            parameter.add_(0.1 * torch.randn_like(parameter))
        x = torch.randn(2, 13, 8)
        expected = x + reference_mamba(block.mixer, block.norm(x))
        assert torch.allclose(block(x), expected, atol=1e-5)
        block.train()  # the training path (mamba_inner_fn reference) must agree too
        assert torch.allclose(block(x), expected, atol=1e-5)


def test_mamba_state_dict_has_mamba_ssm_names():
    names = {name.split(".", 1)[1] for name in MambaBlock(8).state_dict() if name.startswith("mixer.")}
    assert names == {"in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight",
                     "dt_proj.bias", "A_log", "D", "out_proj.weight"}
    assert "mambapy" in scan_implementation("cpu")


def test_modulator_gamma_offset_and_last_token_pooling():
    torch.manual_seed(0)
    for encoder in ("mamba", "gru"):
        modulator = SensorModulator(d_model=4, sensor_channels=6, hidden_dim=8, encoder=encoder).eval()
        with torch.no_grad():
            modulator.head.weight.zero_()
            modulator.head.bias.copy_(torch.arange(8.0))
            gamma, beta = modulator(torch.randn(2, 10, 6))
        assert torch.equal(gamma, torch.tensor([1.0, 2.0, 3.0, 4.0]).expand(2, 1, 4))
        assert torch.equal(beta, torch.tensor([4.0, 5.0, 6.0, 7.0]).expand(2, 1, 4))


def test_gru_variant_is_causal_and_uses_the_last_step():
    torch.manual_seed(0)
    modulator = SensorModulator(d_model=4, hidden_dim=8, encoder="gru").eval()
    sensor = torch.randn(1, 10, 6)
    changed = sensor.clone()
    changed[:, -1] += 1.0
    with torch.no_grad():
        expected = modulator.temporal(modulator.embed(sensor))[0][:, -1]
        assert torch.allclose(modulator.encode(sensor), expected)
        assert not torch.allclose(modulator(sensor)[0], modulator(changed)[0])


def test_film_broadcasts_over_tokens():
    tokens = torch.ones(2, 3, 4)
    gamma = torch.full((2, 1, 4), 2.0)
    beta = torch.full((2, 1, 4), -1.0)
    assert torch.equal(film(tokens, gamma, beta), torch.ones(2, 3, 4))


def test_cpu_mixer_equals_transformers_mambamixer_on_the_same_weights():
    """The plain-torch CPU mixer is a drop-in for transformers' MambaMixer (use_mambapy): same keys, same output."""
    from weldfilm.methods.causal_film.mamba import SelectiveScanMixer, make_mamba_mixer

    torch.manual_seed(1)
    reference = make_mamba_mixer(8).eval()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    ours = SelectiveScanMixer(8).eval()
    ours.load_state_dict(reference.state_dict())  # strict: identical names and shapes
    x = torch.randn(3, 17, 8)
    with torch.no_grad():
        assert torch.allclose(ours(x), reference(x), atol=1e-5)
    ours.train(), reference.train()
    assert torch.allclose(ours(x), reference(x), atol=1e-5)
