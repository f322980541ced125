"""Tests of run folders: save/load round trips, corrupt or inconsistent files, atomic saves and
the trainer state stored with the weights."""

from __future__ import annotations

import os
import signal

import json

import pytest
import torch
from safetensors.torch import save_file

import deepmix
from deepmix import DCGMM
from deepmix.errors import CheckpointError, DeepmixError
from deepmix.training import checkpoint as ckpt
from deepmix.training import loop as trainer_mod

SPEC = "F(4,4,2,2)-G(9)-F(3,3,1,1)-G(4,independent)"


@pytest.fixture
def trained(tmp_path, digits):
    """A briefly trained two-layer model, saved to tmp_path / 'run' by the trainer."""
    model = DCGMM(SPEC, (8, 8, 1), seed=2)
    model.fit(digits[0][:200], epochs=2, batch_size=50, delay=0.0, out_dir=tmp_path / "run",
              progress=False)
    return model, tmp_path / "run"


def _assert_same_model(a: DCGMM, b: DCGMM, x: torch.Tensor) -> None:
    assert a.spec() == b.spec() and a.config == b.config
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    for layer in (0, 1):
        assert torch.equal(a.log_likelihood(x, layer), b.log_likelihood(x, layer))


# --------------------------------------------------------------------------------- round trip
def test_trainer_run_folder_loads_to_the_trained_model(trained, digits):
    model, run = trained
    assert {p.name for p in run.iterdir()} == {"config.json", "weights.safetensors",
                                               "metrics.jsonl"}
    loaded = deepmix.load(run)
    _assert_same_model(model, loaded, digits[0][:30])
    config = json.loads((run / "config.json").read_text())
    assert config["format"] == "deepmix-run/1"
    assert config["model"]["spec"] == SPEC and config["model"]["input_shape"] == [8, 8, 1]
    assert config["family"] == "dcgmm" and config["train"]["objective"] == "dcgmm"
    assert config["train"]["loop"]["epochs"] == 2 and config["data"]["n"] == 200
    state = ckpt.load_checkpoint(DCGMM(SPEC, (8, 8, 1)), run)
    assert state["step"] == 8 and len(state["objective"]["controllers"]) == 2


def test_save_load_round_trip(tmp_path, digits):
    model = DCGMM("2L-b", seed=5)
    with torch.no_grad():
        for g in model.gmm_layers:
            g.mu.uniform_(0, 1, generator=torch.Generator().manual_seed(1))
            g.d.uniform_(1, 4, generator=torch.Generator().manual_seed(2))
            g.sigma.fill_(0.123)
    model.save(tmp_path / "m")
    loaded = deepmix.load(tmp_path / "m")
    assert loaded.config.name == "2L-b"
    x = torch.rand(4, 28, 28, 1, generator=torch.Generator().manual_seed(3))
    _assert_same_model(model, loaded, x)
    assert torch.equal(model.log_prob(x), loaded.log_prob(x))
    assert float(loaded.gmm_layers[0].sigma) == 0.123
    # Saving again over an existing folder replaces it.
    with torch.no_grad():
        model.gmm_layers[0].mu.add_(0.5)
    model.save(tmp_path / "m")
    _assert_same_model(model, deepmix.load(tmp_path / "m"), x)


# ------------------------------------------------------------------------------ broken folders
def _corrupt_truncated(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _corrupt_random(path):
    path.write_bytes(os.urandom(path.stat().st_size))


def _corrupt_empty(path):
    path.write_bytes(b"")


def _corrupt_header(path):
    data = bytearray(path.read_bytes())
    data[8:20] = b"not json!!!!"
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("corrupt", [_corrupt_truncated, _corrupt_random, _corrupt_empty,
                                     _corrupt_header])
def test_corrupt_weights_raise_checkpoint_error(trained, corrupt):
    _, run = trained
    corrupt(run / "weights.safetensors")
    with pytest.raises(CheckpointError, match="weights.safetensors"):
        deepmix.load(run)


@pytest.mark.parametrize("name", ["weights.safetensors", "config.json"])
def test_missing_file_raises_checkpoint_error(trained, name):
    _, run = trained
    (run / name).unlink()
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        deepmix.load(run)


def test_missing_folder_raises_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        deepmix.load(tmp_path / "nowhere")


def _edit_config(run, edit):
    path = run / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["model"].update(colour="blue"), "colour"),
    (lambda c: c["model"].update(input_shape="8x8"), "input_shape"),
    (lambda c: c["model"].update(seed=1.5), "seed"),
    (lambda c: c["model"].update(spec="F(4,2)-X(3)"), r"X\(3\)"),
    (lambda c: c["model"].update(input_shape=[9, 9, 1]), "layer 1"),
    (lambda c: c.pop("model"), "format"),
    (lambda c: c.update(format="something/2"), "format"),
])
def test_bad_config_raises_checkpoint_error(trained, edit, message):
    _, run = trained
    _edit_config(run, edit)
    with pytest.raises(CheckpointError, match=message):
        deepmix.load(run)


def test_unknown_top_level_config_key_raises(trained):
    _, run = trained
    _edit_config(run, lambda c: c.update(modle={"spec": "G(3)"}))
    with pytest.raises(CheckpointError, match="modle"):
        deepmix.load(run)


def test_config_not_json_raises_checkpoint_error(trained):
    _, run = trained
    (run / "config.json").write_text("{ this is not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        deepmix.load(run)


def test_unknown_train_key_stops_resume(trained, digits):
    _, run = trained
    _edit_config(run, lambda c: c["train"].update(momentum=0.9))
    with pytest.raises(DeepmixError, match="momentum"):
        DCGMM(SPEC, (8, 8, 1), seed=2).fit(digits[0][:200], out_dir=run, resume=True,
                                            progress=False)


@pytest.mark.parametrize("other_spec, message", [
    ("F(4,4,2,2)-G(16)-F(3,3,1,1)-G(4,independent)", "shape"),   # K differs
    ("F(4,4,2,2)-G(9,independent)-F(3,3,1,1)-G(4,independent)", "shape"),  # 9 positions
    ("F(4,4,2,2)-G(9)", "does not match"),                       # fewer layers
])
def test_weights_that_do_not_match_the_config(trained, other_spec, message):
    _, run = trained
    _edit_config(run, lambda c: c["model"].update(spec=other_spec))
    with pytest.raises(CheckpointError, match=message):
        deepmix.load(run)


def test_weights_not_written_by_deepmix_or_not_finite(trained):
    model, run = trained
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(run / "weights.safetensors"))               # no deepmix metadata
    with pytest.raises(CheckpointError, match="not written by deepmix"):
        deepmix.load(run)
    tensors["layers.1.mu"] = tensors["layers.1.mu"].clone().fill_(float("nan"))
    save_file(tensors, str(run / "weights.safetensors"), metadata={"format": ckpt.FORMAT})
    with pytest.raises(CheckpointError, match="NaN"):
        deepmix.load(run)


# ------------------------------------------------------------------------------ atomic writes
def test_failed_save_leaves_the_old_weights_intact(trained, monkeypatch, digits):
    model, run = trained
    before = (run / "weights.safetensors").read_bytes()
    config_before = (run / "config.json").read_bytes()

    def broken_save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:               # half a file, then the disk fails
            fh.write(b"\x00" * 100)
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", broken_save_file)
    saved_mu = model.gmm_layers[0].mu.detach().clone()
    with torch.no_grad():
        model.gmm_layers[0].mu.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        model.save(run)
    assert (run / "weights.safetensors").read_bytes() == before
    assert (run / "config.json").read_bytes() == config_before
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "metrics.jsonl",
                                                     "weights.safetensors"]   # no temp files
    monkeypatch.undo()
    loaded = deepmix.load(run)
    assert torch.equal(loaded.gmm_layers[0].mu, saved_mu)


def test_checkpoints_at_epoch_ends_and_every_n_steps(tmp_path, digits, monkeypatch):
    steps = []
    real = trainer_mod.save_model

    def spy(model, directory, **kw):
        steps.append(kw["state"]["step"])
        return real(model, directory, **kw)

    monkeypatch.setattr(trainer_mod, "save_model", spy)
    model = DCGMM("F(4,4,4,4)-G(4)", (8, 8, 1))
    model.fit(digits[0][:100], epochs=2, batch_size=20, checkpoint_every=3,
              out_dir=tmp_path / "r", progress=False)
    assert steps == [0, 3, 5, 6, 9, 10]   # 0: the initialised model, before the first step
    steps.clear()
    DCGMM("F(4,4,4,4)-G(4)", (8, 8, 1)).fit(digits[0][:100], epochs=2, batch_size=20,
                                             out_dir=tmp_path / "s", stop_after_steps=7,
                                             progress=False)
    assert steps == [0, 5, 7]


def test_keyboard_interrupt_mid_step_then_resume_equals_uninterrupted(tmp_path, digits):
    images = digits[0][:100]
    spec = "F(4,4,2,2)-G(9)-F(3,3,1,1)-G(4)"
    kw = dict(epochs=2, batch_size=20, delay=0.0, progress=False)
    full = DCGMM(spec, (8, 8, 1), seed=1)
    full.fit(images, out_dir=tmp_path / "A", **kw)

    part = DCGMM(spec, (8, 8, 1), seed=1)
    top = part.gmm_layers[1]
    original, calls = top.train_step, [0]

    def interrupted(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 4:                    # Ctrl-C while the top layer works on step 4
            os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kwargs)

    top.train_step = interrupted
    with pytest.raises(KeyboardInterrupt):
        part.fit(images, out_dir=tmp_path / "B", **kw)
    resumed = DCGMM(spec, (8, 8, 1), seed=1)
    resumed.fit(images, out_dir=tmp_path / "B", resume=True, **kw)
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
