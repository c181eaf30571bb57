"""Tests for multimodal_sleep_model: parameter count, shapes, logits, input checks, regroup order, checkpoints."""
import pytest
import torch

from multimodal_sleep_model import (FUSION_STRATEGIES, PPG_ONLY_PARAMETERS, STEPS_PER_WINDOW, MultiModalSleepNet,
                                    SleepPPGNet, build_model, checkpoint_model_fields, count_parameters,
                                    load_model_from_checkpoint, main, regroup_windows)
from sleepppg_common import SAMPLES_PER_WINDOW

N_WINDOWS = 8  # a 4-min "night": cheap on CPU
VARIANTS = [("ppg_only", {})] + [("real_ecg", {"fusion_strategy": s}) for s in FUSION_STRATEGIES]


def _inputs(batch=2, n_windows=N_WINDOWS, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 1, n_windows * SAMPLES_PER_WINDOW, generator=g),
            torch.randn(batch, 1, n_windows * SAMPLES_PER_WINDOW, generator=g))


def _forward(model, ppg, ecg):
    return model(ppg) if isinstance(model, SleepPPGNet) else model(ppg, ecg)


def test_ppg_only_parameter_count_matches_reference_and_full_night_runs():
    torch.manual_seed(0)
    model = SleepPPGNet().eval()
    assert count_parameters(model) == PPG_ONLY_PARAMETERS == 3_642_644
    with torch.no_grad():  # one 10-h night at the default size: a few seconds on CPU
        assert model(torch.randn(1, 1, 1200 * SAMPLES_PER_WINDOW)).shape == (1, 4, 1200)
    # the count does not depend on the night length (the dense layer is shared across windows)
    assert count_parameters(SleepPPGNet(n_windows=N_WINDOWS)) == PPG_ONLY_PARAMETERS


def test_multimodal_parameter_counts():
    # two encoders; the dense layer sees 512*4 channels for concat; attention adds 4 Linear(256,256);
    # gated adds 2 Linear(256,256)
    enc = sum(p.numel() for p in SleepPPGNet().encoder.parameters())
    ppg_only = PPG_ONLY_PARAMETERS
    lin = 256 * 256 + 256
    assert count_parameters(MultiModalSleepNet("concat")) == ppg_only + enc + 1024 * 128
    assert count_parameters(MultiModalSleepNet("attention")) == ppg_only + enc + 4 * lin
    assert count_parameters(MultiModalSleepNet("gated")) == ppg_only + enc + 2 * lin


def test_weight_norm_uses_parametrizations():
    names = [n for n, _ in SleepPPGNet(n_windows=N_WINDOWS).named_parameters()]
    assert any("parametrizations.weight.original0" in n for n in names)
    assert not any(n.endswith("weight_g") for n in names)


@pytest.mark.parametrize("kind,extra", VARIANTS)
def test_shapes_and_outputs_are_logits(kind, extra):
    torch.manual_seed(0)
    model = build_model(kind, n_windows=N_WINDOWS, **extra).eval()
    ppg, ecg = _inputs()
    with torch.no_grad():
        logits_BCW = _forward(model, ppg, ecg)
    assert logits_BCW.shape == (2, 4, N_WINDOWS)
    assert torch.isfinite(logits_BCW).all()
    # logits, not probabilities: columns do not sum to 1 and some values are negative
    assert not torch.allclose(logits_BCW.sum(dim=1), torch.ones(2, N_WINDOWS), atol=1e-3)
    assert (logits_BCW < 0).any()


def test_training_step_backpropagates():
    torch.manual_seed(0)
    model = SleepPPGNet(n_windows=N_WINDOWS)
    ppg, _ = _inputs()
    labels = torch.randint(0, 4, (2, N_WINDOWS))
    labels[0, -2:] = -1
    loss = torch.nn.functional.cross_entropy(model(ppg), labels, ignore_index=-1)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("bad_shape", [(2, 1, N_WINDOWS * SAMPLES_PER_WINDOW - 1), (2, 2, N_WINDOWS * 1024),
                                       (N_WINDOWS * 1024,), (2, N_WINDOWS * 1024)])
def test_wrong_input_shape_is_a_clear_value_error(bad_shape):
    model = SleepPPGNet(n_windows=N_WINDOWS)
    with pytest.raises(ValueError, match="ppg"):
        model(torch.zeros(bad_shape))


def test_wrong_length_message_names_expected_samples():
    model = SleepPPGNet(n_windows=N_WINDOWS)
    with pytest.raises(ValueError, match=f"{N_WINDOWS * SAMPLES_PER_WINDOW}"):
        model(torch.zeros(1, 1, 1200 * SAMPLES_PER_WINDOW // 100))
    mm = MultiModalSleepNet("gated", n_windows=N_WINDOWS)
    ppg, _ = _inputs()
    with pytest.raises(ValueError, match="ecg"):
        mm(ppg, torch.zeros(2, 1, 100))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="fusion_strategy"):
        MultiModalSleepNet("sum")
    with pytest.raises(ValueError, match="n_windows"):
        SleepPPGNet(n_windows=0)
    with pytest.raises(ValueError, match="unknown model kind"):
        build_model("generated_ecg")


def _regroup_slow(feat_BCL, n_windows):
    b, c, _ = feat_BCL.shape
    out = torch.empty(b, c * STEPS_PER_WINDOW, n_windows)
    for bi in range(b):
        for ci in range(c):
            for w in range(n_windows):
                for s in range(STEPS_PER_WINDOW):
                    # step s of window w (time 4w+s) goes to channel 4c+s (the reference's order)
                    out[bi, ci * STEPS_PER_WINDOW + s, w] = feat_BCL[bi, ci, w * STEPS_PER_WINDOW + s]
    return out


def test_regroup_matches_slow_loop():
    feat = torch.randn(2, 5, 3 * STEPS_PER_WINDOW)
    assert torch.equal(regroup_windows(feat, 3), _regroup_slow(feat, 3))
    with pytest.raises(ValueError):
        regroup_windows(feat, 4)


def test_window_outputs_depend_only_on_past_and_own_window():
    """Causal TCN and per-window regrouping: changing window k cannot change the logits of windows < k."""
    torch.manual_seed(0)
    model = SleepPPGNet(n_windows=N_WINDOWS).eval()
    ppg, _ = _inputs(batch=1)
    changed = ppg.clone()
    k = 5
    changed[..., k * SAMPLES_PER_WINDOW:] += 1.0
    with torch.no_grad():
        a, b = model(ppg), model(changed)
    # the encoder's k=3 convs reach a few samples across the boundary, so compare windows < k-1 exactly
    assert torch.allclose(a[..., :k - 1], b[..., :k - 1], atol=1e-6)
    assert not torch.allclose(a[..., k:], b[..., k:])


@pytest.mark.parametrize("kind,extra", [VARIANTS[0], VARIANTS[2]])
def test_checkpoint_round_trip(tmp_path, kind, extra):
    torch.manual_seed(1)
    model = build_model(kind, n_windows=N_WINDOWS, dropout=0.1, **extra)
    ppg, ecg = _inputs(batch=1, seed=3)
    _forward(model.train(), ppg, ecg)  # move BatchNorm running stats away from their init
    model.eval()
    path = tmp_path / "best_model.pth"
    torch.save({**checkpoint_model_fields(model), "model_state_dict": model.state_dict(), "epoch": 3,
                "metrics": {"kappa": 0.5}}, path)
    loaded, ckpt = load_model_from_checkpoint(path, expected_kind=kind)
    assert ckpt["epoch"] == 3 and ckpt["model_args"]["n_windows"] == N_WINDOWS
    assert not loaded.training and type(loaded) is type(model) and loaded.model_args == model.model_args
    with torch.no_grad():
        assert torch.equal(_forward(model, ppg, ecg), _forward(loaded, ppg, ecg))


def test_checkpoint_errors(tmp_path):
    model = SleepPPGNet(n_windows=N_WINDOWS)
    path = tmp_path / "m.pth"
    torch.save({**checkpoint_model_fields(model), "model_state_dict": model.state_dict()}, path)
    with pytest.raises(ValueError, match="'ppg_only' model but a 'real_ecg'"):
        load_model_from_checkpoint(path, expected_kind="real_ecg")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_model_from_checkpoint(tmp_path / "nope.pth")
    torch.save({"state_dict": model.state_dict()}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a checkpoint of this project"):
        load_model_from_checkpoint(tmp_path / "other.pth")
    torch.save({"model_kind": "generated_ecg", "model_args": {}, "model_state_dict": {}}, tmp_path / "k.pth")
    with pytest.raises(ValueError, match="unknown model_kind"):
        load_model_from_checkpoint(tmp_path / "k.pth")
    torch.save({"model_kind": "ppg_only", "model_args": {"n_windows": 8, "depth": 3},
                "model_state_dict": model.state_dict()}, tmp_path / "args.pth")
    with pytest.raises(ValueError, match="cannot build"):
        load_model_from_checkpoint(tmp_path / "args.pth")
    torch.save({"model_kind": "real_ecg", "model_args": {"n_windows": 8},
                "model_state_dict": model.state_dict()}, tmp_path / "mismatch.pth")
    with pytest.raises(ValueError, match="do not fit"):
        load_model_from_checkpoint(tmp_path / "mismatch.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError):
        load_model_from_checkpoint(tmp_path / "junk.pth")


def test_checkpoint_fields_unwrap_compiled_or_ddp_prefixes(tmp_path):
    torch.manual_seed(2)
    model = SleepPPGNet(n_windows=N_WINDOWS).eval()
    state = {"module." + k: v for k, v in model.state_dict().items()}
    torch.save({**checkpoint_model_fields(model), "model_state_dict": state}, tmp_path / "ddp.pth")
    loaded, _ = load_model_from_checkpoint(tmp_path / "ddp.pth")
    ppg, _ = _inputs(batch=1)
    with torch.no_grad():
        assert torch.equal(model(ppg), loaded(ppg))


def test_cli_prints_every_variant(capsys):
    assert main(["--n-windows", "2", "--batch", "1"]) == 0
    out = capsys.readouterr().out
    for name in ("ppg_only", "real_ecg/concat", "real_ecg/attention", "real_ecg/gated", "3,642,644"):
        assert name in out
