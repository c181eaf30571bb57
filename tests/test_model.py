"""Tests for multimodal_sleep_model: parameter count, shapes, logits, input checks, regroup order, activation
checkpointing, window counts, causal TCN. Checkpoint files are tests/test_checkpoints.py."""
import pytest
import torch
from helpers import TINY_WINDOWS, model_forward, model_inputs

from multimodal_sleep_model import (
    FUSION_STRATEGIES,
    PPG_ONLY_PARAMETERS,
    STEPS_PER_WINDOW,
    MultiModalSleepNet,
    SleepPPGNet,
    build_model,
    count_parameters,
    main,
    regroup_windows,
    set_activation_checkpointing,
    with_n_windows,
)
from sleepppg.constants import SAMPLES_PER_WINDOW

N_WINDOWS = TINY_WINDOWS
VARIANTS = [("ppg_only", {})] + [("real_ecg", {"fusion_strategy": s}) for s in FUSION_STRATEGIES]



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
    ppg, ecg = model_inputs()
    with torch.no_grad():
        logits_BCW = model_forward(model, ppg, ecg)
    assert logits_BCW.shape == (2, 4, N_WINDOWS)
    assert torch.isfinite(logits_BCW).all()
    # logits, not probabilities: columns do not sum to 1 and some values are negative
    assert not torch.allclose(logits_BCW.sum(dim=1), torch.ones(2, N_WINDOWS), atol=1e-3)
    assert (logits_BCW < 0).any()


def test_training_step_backpropagates():
    torch.manual_seed(0)
    model = SleepPPGNet(n_windows=N_WINDOWS)
    ppg, _ = model_inputs()
    labels = torch.randint(0, 4, (2, N_WINDOWS))
    labels[0, -2:] = -1
    loss = torch.nn.functional.cross_entropy(model(ppg), labels, ignore_index=-1)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    zero = [name for name, p in model.named_parameters() if not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert not zero, f"parameters without a gradient signal: {zero[:5]}"  # every layer learns, none is cut off


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
    ppg, _ = model_inputs()
    with pytest.raises(ValueError, match="ecg"):
        mm(ppg, torch.zeros(2, 1, 100))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="fusion_strategy"):
        MultiModalSleepNet("sum")
    with pytest.raises(ValueError, match="n_windows"):
        SleepPPGNet(n_windows=0)
    with pytest.raises(ValueError, match="unknown model kind"):
        build_model("generated_ecg")
    with pytest.raises(ValueError, match="tcn_causal"):
        SleepPPGNet(tcn_causal="no")


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
    ppg, _ = model_inputs(batch=1)
    changed = ppg.clone()
    k = 5
    changed[..., k * SAMPLES_PER_WINDOW:] += 1.0
    with torch.no_grad():
        a, b = model(ppg), model(changed)
    # the encoder's k=3 convs reach a few samples across the boundary, so compare windows < k-1 exactly
    assert torch.allclose(a[..., :k - 1], b[..., :k - 1], atol=1e-6)
    assert not torch.allclose(a[..., k:], b[..., k:])


def test_cli_prints_every_variant(capsys):
    assert main(["--n-windows", "2", "--batch", "1"]) == 0
    out = capsys.readouterr().out
    for name in ("ppg_only", "real_ecg/concat", "real_ecg/attention", "real_ecg/gated", "3,642,644", "(1, 4, 2)"):
        assert name in out


def test_cli_default_window_count_is_not_the_class_count(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "(2, 1, 10240)" in out and out.count("(2, 4, 10)") == 4  # B=2, C=4 classes, W=10 windows


# ----------------------------------------------------------------------------------------------------------
# Activation checkpointing


def _train_step(model, ppg, ecg, labels):
    model.train()
    model.zero_grad(set_to_none=True)
    logits = model_forward(model, ppg, ecg)
    torch.nn.functional.cross_entropy(logits, labels).backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("kind,extra", [VARIANTS[0], VARIANTS[3]])
def test_activation_checkpointing_same_outputs_gradients_and_batchnorm_stats(kind, extra):
    torch.manual_seed(0)
    plain = build_model(kind, n_windows=N_WINDOWS, dropout=0.0, **extra)
    ckpt = build_model(kind, n_windows=N_WINDOWS, dropout=0.0, **extra)
    ckpt.load_state_dict(plain.state_dict())
    assert set_activation_checkpointing(ckpt, True) is ckpt
    ppg, ecg = model_inputs(batch=2, seed=1)
    labels = torch.randint(0, 4, (2, N_WINDOWS))
    out_a, grads_a = _train_step(plain, ppg, ecg, labels)
    out_b, grads_b = _train_step(ckpt, ppg, ecg, labels)
    assert torch.equal(out_a, out_b)
    for name, grad in grads_a.items():
        assert torch.allclose(grad, grads_b[name], rtol=1e-5, atol=1e-7), name
    # the recomputation in backward must not update BatchNorm's running statistics a second time
    for (name, a), b in zip(plain.state_dict().items(), ckpt.state_dict().values()):
        assert torch.equal(a, b), name
    encoders = [m for m in ckpt.modules() if type(m).__name__ == "Encoder"]
    assert encoders and all(m.activation_checkpointing for m in encoders)
    set_activation_checkpointing(ckpt, False)
    assert not any(m.activation_checkpointing for m in encoders)
    with pytest.raises(ValueError, match="no encoder"):
        set_activation_checkpointing(torch.nn.Linear(2, 2), True)


def test_activation_checkpointing_keeps_less_for_backward():
    """The encoder keeps far fewer bytes for backward with checkpointing (what saves memory on a full night)."""
    saved = {}
    ppg, _ = model_inputs(batch=1, n_windows=32)
    for enabled in (False, True):
        encoder = set_activation_checkpointing(SleepPPGNet(n_windows=32), enabled).encoder
        total = [0]

        def pack(t, total=total):
            total[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            encoder(ppg)
        saved[enabled] = total[0]
    assert saved[True] < saved[False] / 5


# ----------------------------------------------------------------------------------------------------------
# Another window count


def test_with_n_windows_equals_a_model_built_there():
    torch.manual_seed(3)
    short = SleepPPGNet(n_windows=4, tcn_causal=False)
    model_forward(short.train(), *model_inputs(batch=2, n_windows=4))  # move BatchNorm stats off their init
    short.eval()
    built = SleepPPGNet(n_windows=N_WINDOWS, tcn_causal=False).eval()
    built.load_state_dict(short.state_dict())
    rebuilt = with_n_windows(short, N_WINDOWS)
    assert rebuilt.n_windows == N_WINDOWS and rebuilt.model_args == {**short.model_args, "n_windows": N_WINDOWS}
    assert not rebuilt.training and short.n_windows == 4  # a copy; the original is untouched
    ppg, _ = model_inputs(batch=1, seed=8)
    with torch.no_grad():
        assert torch.equal(rebuilt(ppg), built(ppg))
    with pytest.raises(ValueError, match="not a model of this module"):
        with_n_windows(torch.nn.Linear(2, 2), N_WINDOWS)


# ----------------------------------------------------------------------------------------------------------
# Causal or centred TCN


def test_centred_tcn_has_the_same_parameters_and_sees_later_windows():
    causal, centred = SleepPPGNet(n_windows=64), SleepPPGNet(n_windows=64, tcn_causal=False)
    assert count_parameters(causal) == count_parameters(centred) == PPG_ONLY_PARAMETERS
    assert [p.shape for p in causal.parameters()] == [p.shape for p in centred.parameters()]
    centred.load_state_dict(causal.state_dict())
    emb_BEW = torch.randn(1, 128, 64)
    changed = emb_BEW.clone()
    k = 40
    changed[..., k] += 1.0
    for model in (causal, centred):
        model.eval()
    with torch.no_grad():
        a_c, b_c = causal.head.tcn(emb_BEW), causal.head.tcn(changed)
        a_n, b_n = centred.head.tcn(emb_BEW), centred.head.tcn(changed)
    assert torch.equal(a_c[..., :k], b_c[..., :k]) and not torch.equal(a_c[..., k], b_c[..., k])
    # centred: window w sees up to +-3d per conv; changing window k moves earlier outputs too
    assert not torch.equal(a_n[..., k - 1], b_n[..., k - 1]) and not torch.equal(a_n[..., 0], b_n[..., 0])


def test_activation_checkpointing_under_torch_compile():
    """torch.compile traces the checkpointed encoder (graph-level recomputation) with the same results."""
    torch.manual_seed(0)
    plain = SleepPPGNet(n_windows=2).encoder
    ckpt = set_activation_checkpointing(SleepPPGNet(n_windows=2), True).encoder
    ckpt.load_state_dict(plain.state_dict())
    compiled = torch.compile(ckpt, backend="aot_eager")  # no C++ compiler needed
    ppg, _ = model_inputs(batch=2, n_windows=2)
    out_a, out_b = plain(ppg), compiled(ppg)
    out_a.square().sum().backward()
    out_b.square().sum().backward()
    assert torch.allclose(out_a, out_b, atol=1e-6)
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6), name
    for (name, a), b in zip(plain.named_buffers(), ckpt.buffers()):  # running stats updated once, not twice
        assert torch.allclose(a.double(), b.double()), name


def test_logits_stay_fp32_under_bf16_autocast():
    """The classifier runs outside autocast: logits keep fp32 precision (near-ties between stages must not be
    rounded to bf16), and equal the fp32 classifier applied to the (bf16-computed) hidden features."""
    torch.manual_seed(0)
    model = SleepPPGNet(n_windows=N_WINDOWS).eval()
    ppg, _ = model_inputs(batch=1)
    captured = {}
    model.head.tcn.register_forward_hook(lambda m, i, out: captured.update(hidden=out))
    with torch.no_grad(), torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        logits = model(ppg)
    assert captured["hidden"].dtype == torch.bfloat16  # the rest of the model did run in bf16
    assert logits.dtype == torch.float32
    with torch.no_grad():
        expected = model.head.classifier(captured["hidden"].float())
    assert torch.equal(logits, expected)
