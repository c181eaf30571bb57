"""Tests for multimodal_sleep_model: parameter count, shapes, logits, input checks, regroup order, checkpoints
(ours and the reference's), broken checkpoint files, activation checkpointing, window counts, causal TCN."""
import pickle

import numpy as np
import pytest
import torch
from reference_model import NAMINGS, RefMultiModalSleepNet, RefSleepPPGNet, randomize

from multimodal_sleep_model import (
    FUSION_STRATEGIES,
    PPG_ONLY_PARAMETERS,
    REFERENCE_VERSIONS,
    STEPS_PER_WINDOW,
    CheckpointError,
    MultiModalSleepNet,
    SleepPPGNet,
    build_model,
    checkpoint_model_fields,
    count_parameters,
    load_model_from_checkpoint,
    main,
    regroup_windows,
    set_activation_checkpointing,
    with_n_windows,
)
from sleepppg.constants import SAMPLES_PER_WINDOW

N_WINDOWS = 8  # a 4-min "night": cheap on CPU
VARIANTS = [("ppg_only", {})] + [("real_ecg", {"fusion_strategy": s}) for s in FUSION_STRATEGIES]


def _inputs(batch=2, n_windows=N_WINDOWS, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 1, n_windows * SAMPLES_PER_WINDOW, generator=g),
            torch.randn(batch, 1, n_windows * SAMPLES_PER_WINDOW, generator=g))


def _forward(model, ppg, ecg):
    return model(ppg) if ecg is None or isinstance(model, SleepPPGNet) else model(ppg, ecg)


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
    with pytest.raises(CheckpointError, match="not a checkpoint of this project"):
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
    ppg, _ = _inputs(batch=1)
    # DDP; compile(DDP(m)) as train_ppg_only wraps; DDP/DataParallel(compile(m)), the other order
    for prefix in ("module.", "_orig_mod.module.", "module._orig_mod."):
        state = {prefix + k: v for k, v in model.state_dict().items()}
        torch.save({**checkpoint_model_fields(model), "model_state_dict": state}, tmp_path / "wrapped.pth")
        loaded, _ = load_model_from_checkpoint(tmp_path / "wrapped.pth")
        with torch.no_grad():
            assert torch.equal(model(ppg), loaded(ppg)), prefix


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
# Checkpoints of the reference implementation


def _reference_checkpoint(ref_model, epoch=7):
    """What the reference's training script saves as best_model.pth: weights, optimizer, numpy-float metrics."""
    optimizer = torch.optim.Adam(ref_model.parameters(), lr=2.5e-4, weight_decay=1e-5)
    return {"epoch": epoch, "model_state_dict": ref_model.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
            "best_validation_loss": 0.61, "best_overall_kappa": np.float64(0.68),
            "training_history": {"train_losses": [0.9, 0.7], "val_overall_kappas": [np.float64(0.5), np.float64(0.68)]},
            "config": {"model_type": "ppg_only", "training": {"learning_rate": 2.5e-4, "num_epochs": 50},
                       "inference": {"only_inference": "flase"}}}


def _reference_and_ours_outputs(ref_model, ours, ppg, ecg):
    """(reference softmax output, reference logits before its softmax, our logits)."""
    captured = {}
    hook = ref_model.final_conv.register_forward_hook(lambda m, i, out: captured.update(logits=out))
    with torch.no_grad():
        probs = ref_model(ppg) if isinstance(ref_model, RefSleepPPGNet) else ref_model(ppg, ecg)
        logits = _forward(ours, ppg, ecg)
    hook.remove()
    return probs, captured["logits"], logits


@pytest.mark.parametrize("naming", sorted(NAMINGS))
@pytest.mark.parametrize("fusion", [None, *FUSION_STRATEGIES])
def test_reference_checkpoint_gives_the_reference_outputs(tmp_path, fusion, naming):
    torch.manual_seed(0)
    ref = (RefSleepPPGNet(N_WINDOWS, naming=naming) if fusion is None
           else RefMultiModalSleepNet(fusion, N_WINDOWS, naming=naming))
    ref = randomize(ref, seed=5).eval()
    assert any(k.startswith(NAMINGS[naming][0 if fusion is None else 1] + ".") for k in ref.state_dict())
    path = tmp_path / "best_model.pth"
    torch.save(_reference_checkpoint(ref), path)
    ours, ckpt = load_model_from_checkpoint(path, n_windows=N_WINDOWS)
    kind = "ppg_only" if fusion is None else "real_ecg"
    assert ckpt["checkpoint_format"] == "reference" and ckpt["model_kind"] == kind and not ours.training
    assert ckpt["reference_version"] in REFERENCE_VERSIONS
    assert NAMINGS[naming][0] in ckpt["reference_version"]  # the version is told by its encoder's name
    assert ckpt["trained_n_windows"] == 1200 and ckpt["model_args"]["n_windows"] == N_WINDOWS
    assert ckpt["model_args"].get("fusion_strategy") == fusion and ckpt["model_args"]["tcn_causal"] is True
    assert "inferred" in ckpt["model_fields_inferred"] and ckpt["epoch"] == 7
    assert ckpt["best_overall_kappa"] == pytest.approx(0.68)
    ppg, ecg = _inputs(batch=2, seed=9)
    probs, ref_logits, logits = _reference_and_ours_outputs(ref, ours, ppg, ecg)
    assert torch.allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)
    assert torch.allclose(logits.softmax(dim=1), probs, rtol=1e-5, atol=1e-6)
    assert count_parameters(ours) == count_parameters(ref)


@pytest.mark.parametrize("naming", sorted(NAMINGS))
def test_reference_bare_state_dict_and_weight_norm_are_the_same_function(tmp_path, naming):
    ref = randomize(RefSleepPPGNet(N_WINDOWS, naming=naming), seed=2).eval()
    torch.save(ref.state_dict(), tmp_path / "weights.pth")  # a bare state dict with the reference's names
    ours, ckpt = load_model_from_checkpoint(tmp_path / "weights.pth", n_windows=N_WINDOWS, expected_kind="ppg_only")
    assert ckpt["checkpoint_format"] == "reference" and set(ckpt) >= {"model_state_dict", "model_args"}
    # the effective conv weight: w = g * v / ||v||, the norm over the input-channel and kernel dims
    g, v = ref.tcnblock2.network[3].conv2.weight_g, ref.tcnblock2.network[3].conv2.weight_v
    w = g * v / v.norm(dim=(1, 2), keepdim=True)
    assert torch.allclose(ours.head.tcn[1][3].net[3].conv.weight, w, atol=1e-6)
    ppg, _ = _inputs(batch=1, seed=4)
    probs, ref_logits, logits = _reference_and_ours_outputs(ref, ours, ppg, None)
    assert torch.allclose(logits, ref_logits, atol=1e-5)
    # at the reference's own 1,200 windows by default (no n_windows given)
    full, _ = load_model_from_checkpoint(tmp_path / "weights.pth")
    assert full.n_windows == 1200


def test_reference_checkpoint_errors(tmp_path):
    ref = randomize(RefSleepPPGNet(N_WINDOWS), seed=3)
    state = ref.state_dict()
    state["tcnblock1.network.2.net.0.weight_v"] = state["tcnblock1.network.2.net.0.weight_v"] + 1.0
    torch.save({"model_state_dict": state}, tmp_path / "alias.pth")
    with pytest.raises(CheckpointError, match="net.0.weight_v and .*conv1.weight_v are one convolution"):
        load_model_from_checkpoint(tmp_path / "alias.pth")
    state = ref.state_dict()
    state["extra_head.weight"] = torch.zeros(3)
    torch.save({"model_state_dict": state}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match="extra_head.weight"):
        load_model_from_checkpoint(tmp_path / "extra.pth")
    torch.save({"model_state_dict": ref.state_dict()}, tmp_path / "kind.pth")
    with pytest.raises(CheckpointError, match="'ppg_only' model but a 'real_ecg'"):
        load_model_from_checkpoint(tmp_path / "kind.pth", expected_kind="real_ecg")
    state = ref.state_dict()
    del state["resconv_blocks.3.bn2.running_var"]
    torch.save({"model_state_dict": state}, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"1 missing \(encoder.3.main.4.running_var\)"):
        load_model_from_checkpoint(tmp_path / "missing.pth")


# ----------------------------------------------------------------------------------------------------------
# Files that cannot be a usable model


class _Arbitrary:
    """Stands for any Python object a malicious or foreign pickle may hold."""


def _broken_files(tmp_path):
    model = SleepPPGNet(n_windows=N_WINDOWS)
    good = tmp_path / "good.pth"
    torch.save({**checkpoint_model_fields(model), "model_state_dict": model.state_dict()}, good)
    files = {"empty.pth": b"", "random.pth": np.random.default_rng(0).bytes(4096),
             "text.pth": b"model_kind: ppg_only\nthis is a YAML file, not weights\n",
             "truncated.pth": good.read_bytes()[:5000]}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    torch.save({"model_state_dict": model.state_dict(), "extra": _Arbitrary()}, tmp_path / "object.pth")
    with open(tmp_path / "plain_pickle.pth", "wb") as f:  # a legacy (non-zip) pickle with a set
        pickle.dump({"model_kind": "ppg_only", "stuff": {1, 2}}, f)
    return sorted(list(files) + ["object.pth", "plain_pickle.pth"])


def test_unusable_files_give_one_line_naming_the_file(tmp_path):
    for name in _broken_files(tmp_path):
        with pytest.raises(CheckpointError) as info:
            load_model_from_checkpoint(tmp_path / name)
        msg = str(info.value)
        assert name in msg and "\n" not in msg, msg
        assert "weights_only" not in msg, msg  # never torch's advice to load unsafely
    msg = str(pytest.raises(CheckpointError, load_model_from_checkpoint, tmp_path / "object.pth").value)
    assert "_Arbitrary" in msg and "no code from it runs" in msg
    assert "empty (0 bytes)" in str(pytest.raises(CheckpointError, load_model_from_checkpoint,
                                                  tmp_path / "empty.pth").value)
    assert "text file" in str(pytest.raises(CheckpointError, load_model_from_checkpoint, tmp_path / "text.pth").value)
    with pytest.raises(CheckpointError, match="is a folder"):
        load_model_from_checkpoint(tmp_path)


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, bad_value):
    model = SleepPPGNet(n_windows=N_WINDOWS)
    state = model.state_dict()
    state["head.tcn.1.2.net.3.conv.parametrizations.weight.original1"][0, 0, 0] = bad_value
    state["head.classifier.weight"][0] = bad_value  # a later tensor: only the first is named
    torch.save({**checkpoint_model_fields(model), "model_state_dict": state}, tmp_path / "diverged.pth")
    with pytest.raises(CheckpointError, match=r"diverged.pth: weight head.tcn.1.2.net.3.conv.parametrizations.weight"
                                              r".original1 holds NaN or Inf values \(1 of "):
        load_model_from_checkpoint(tmp_path / "diverged.pth")
    ref_state = randomize(RefSleepPPGNet(N_WINDOWS)).state_dict()
    ref_state["resconv_blocks.2.bn1.running_var"][3] = bad_value
    torch.save({"model_state_dict": ref_state}, tmp_path / "ref.pth")
    with pytest.raises(CheckpointError, match="weight resconv_blocks.2.bn1.running_var holds NaN or Inf"):
        load_model_from_checkpoint(tmp_path / "ref.pth")


# ----------------------------------------------------------------------------------------------------------
# Activation checkpointing


def _train_step(model, ppg, ecg, labels):
    model.train()
    model.zero_grad(set_to_none=True)
    logits = _forward(model, ppg, ecg)
    torch.nn.functional.cross_entropy(logits, labels).backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("kind,extra", [VARIANTS[0], VARIANTS[3]])
def test_activation_checkpointing_same_outputs_gradients_and_batchnorm_stats(kind, extra):
    torch.manual_seed(0)
    plain = build_model(kind, n_windows=N_WINDOWS, dropout=0.0, **extra)
    ckpt = build_model(kind, n_windows=N_WINDOWS, dropout=0.0, **extra)
    ckpt.load_state_dict(plain.state_dict())
    assert set_activation_checkpointing(ckpt, True) is ckpt
    ppg, ecg = _inputs(batch=2, seed=1)
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
    ppg, _ = _inputs(batch=1, n_windows=32)
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


def test_with_n_windows_and_loading_at_another_count_equal_a_model_built_there(tmp_path):
    torch.manual_seed(3)
    short = SleepPPGNet(n_windows=4, tcn_causal=False)
    _forward(short.train(), *_inputs(batch=2, n_windows=4))  # move BatchNorm stats off their init
    short.eval()
    built = SleepPPGNet(n_windows=N_WINDOWS, tcn_causal=False).eval()
    built.load_state_dict(short.state_dict())
    rebuilt = with_n_windows(short, N_WINDOWS)
    assert rebuilt.n_windows == N_WINDOWS and rebuilt.model_args == {**short.model_args, "n_windows": N_WINDOWS}
    assert not rebuilt.training and short.n_windows == 4  # a copy; the original is untouched
    path = tmp_path / "short.pth"
    torch.save({**checkpoint_model_fields(short), "model_state_dict": short.state_dict()}, path)
    loaded, ckpt = load_model_from_checkpoint(path, n_windows=N_WINDOWS)
    assert ckpt["trained_n_windows"] == 4 and ckpt["model_args"]["n_windows"] == N_WINDOWS
    assert ckpt["checkpoint_format"] == "sleepppg"
    ppg, _ = _inputs(batch=1, seed=8)
    with torch.no_grad():
        expected = built(ppg)
        assert torch.equal(rebuilt(ppg), expected) and torch.equal(loaded(ppg), expected)
    with pytest.raises(ValueError, match="n_windows"):
        load_model_from_checkpoint(path, n_windows=0)


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


def test_tcn_causal_round_trip_and_old_checkpoints_load_causal(tmp_path):
    torch.manual_seed(4)
    centred = SleepPPGNet(n_windows=N_WINDOWS, tcn_causal=False).eval()
    assert centred.model_args["tcn_causal"] is False
    torch.save({**checkpoint_model_fields(centred), "model_state_dict": centred.state_dict()}, tmp_path / "c.pth")
    loaded, ckpt = load_model_from_checkpoint(tmp_path / "c.pth")
    assert ckpt["model_args"]["tcn_causal"] is False and loaded.model_args == centred.model_args
    ppg, _ = _inputs(batch=1)
    with torch.no_grad():
        assert torch.equal(loaded(ppg), centred(ppg))
    old_args = {"n_windows": N_WINDOWS, "num_classes": 4, "dropout": 0.2}  # written before tcn_causal existed
    torch.save({"model_kind": "ppg_only", "model_args": old_args, "model_state_dict": centred.state_dict()},
               tmp_path / "old.pth")
    old, ckpt = load_model_from_checkpoint(tmp_path / "old.pth")
    assert ckpt["model_args"]["tcn_causal"] is True and old.head.tcn[0][0].net[0].chomp > 0
    causal = SleepPPGNet(n_windows=N_WINDOWS).eval()
    causal.load_state_dict(centred.state_dict())
    with torch.no_grad():
        assert torch.equal(old(ppg), causal(ppg)) and not torch.equal(old(ppg), centred(ppg))
    with pytest.raises(ValueError, match="tcn_causal"):
        SleepPPGNet(tcn_causal="no")


def test_activation_checkpointing_under_torch_compile():
    """torch.compile traces the checkpointed encoder (graph-level recomputation) with the same results."""
    torch.manual_seed(0)
    plain = SleepPPGNet(n_windows=2).encoder
    ckpt = set_activation_checkpointing(SleepPPGNet(n_windows=2), True).encoder
    ckpt.load_state_dict(plain.state_dict())
    compiled = torch.compile(ckpt, backend="aot_eager")  # no C++ compiler needed
    ppg, _ = _inputs(batch=2, n_windows=2)
    out_a, out_b = plain(ppg), compiled(ppg)
    out_a.square().sum().backward()
    out_b.square().sum().backward()
    assert torch.allclose(out_a, out_b, atol=1e-6)
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6), name
    for (name, a), b in zip(plain.named_buffers(), ckpt.buffers()):  # running stats updated once, not twice
        assert torch.allclose(a.double(), b.double()), name
