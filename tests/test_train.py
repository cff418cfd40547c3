import pytest
import torch
from torch.optim.swa_utils import AveragedModel

from minima import methods, models, pretraining, runstore, store
from minima.config import Study
from minima.executor import JobsFailed
from minima.methods import Adam
from minima.train import VERBOSE, TrainingDiverged, TrainSpec, epoch_generator, fit
from tolerances import mean_two_orders, running_mean


def _model(study, task, seed=0):
    torch.manual_seed(seed)
    return models.model_for(study, task.n_classes)


def _spec(epochs=3, seed=0):
    return TrainSpec(epochs=epochs, batch_size=16, lr=3e-3, weight_decay=5e-4, seed=seed, label="test")


def test_noisy_inputs_stay_in_range_and_change_between_epochs():
    method = methods.NoisyAdam(noise_sigma=0.5)
    x = torch.rand(8, 3, 16, 16)
    a = method.corrupt(x.clone(), epoch_generator(0, 1, torch.device("cpu")))
    b = method.corrupt(x.clone(), epoch_generator(0, 2, torch.device("cpu")))
    assert a.min() >= 0 and a.max() <= 1 and b.min() >= 0 and b.max() <= 1
    assert not torch.equal(a, b) and not torch.equal(a, x)
    assert torch.equal(a, method.corrupt(x.clone(), epoch_generator(0, 1, torch.device("cpu"))))


def test_swa_weights_are_the_mean_of_the_captured_weights(tiny, source, monkeypatch):
    captured = []
    original = AveragedModel.update_parameters

    def capture(self, model):
        captured.append({k: v.detach().clone() for k, v in model.named_parameters()})
        return original(self, model)

    monkeypatch.setattr(AveragedModel, "update_parameters", capture)
    swa = methods.SWA(swa_threshold=0.0, swa_lr=1e-3, swa_anneal_epochs=0, swa_epochs=2, swa_every=2)
    final, history = fit(_model(tiny, source), source, _spec(epochs=1), swa)
    assert list(history.phase) == ["adam", "swa", "swa"]
    assert len(captured) == 3  # 2 epochs x 3 steps, every 2nd step
    n = len(captured)
    for name, p in final.named_parameters():
        stack = torch.stack([c[name] for c in captured])
        # AveragedModel keeps a running mean (a lerp per capture), this test a stacked mean: both
        # within their bounds of the exact mean, per element (tests/tolerances.py). Leaving out a
        # capture or weighting one wrong moves the mean by ~lr (1e-3) x the weights' steps.
        max_abs = stack.abs().amax(0)
        tol = running_mean(n, 1.0) * max_abs + mean_two_orders(n, 1.0) * stack.abs().mean(0)
        assert ((p - stack.mean(0)).abs() <= tol).all(), name


def test_swa_recomputes_batchnorm_for_the_averaged_weights(tiny, source):
    swa = methods.SWA(swa_threshold=0.0, swa_lr=1e-3, swa_anneal_epochs=0, swa_epochs=1, swa_every=1)
    final, _ = fit(_model(tiny, source), source, _spec(epochs=1), swa)
    bn = final.bn1
    x = source.x_train.float() / 255
    with torch.no_grad():
        stem = final.conv1(x.contiguous(memory_format=torch.channels_last))
    assert len(x) <= 256, "one batch: the running mean is that batch's mean (a cumulative average of one)"
    batch_mean = stem.mean((0, 2, 3))
    # the same convolution of the same images (same operations); batchnorm's kernel averages the
    # m = N H W values per channel its own way (a sum, or Welford's running mean), this test by
    # torch.mean: the running-mean bound covers either, per channel (tests/tolerances.py)
    m = stem[:, 0].numel()
    tol = running_mean(m, 1.0) * stem.abs().amax((0, 2, 3)) + mean_two_orders(m, 1.0) * stem.abs().mean((0, 2, 3))
    assert ((bn.running_mean - batch_mean).abs() <= tol).all()


@pytest.mark.parametrize("method", ["adam", "noisy_adam", "swa", "sam", "adversarial", "entropy_sgd"])
def test_interrupted_and_resumed_run_ends_with_the_same_weights(tiny, source, tmp_path, method):
    study = Study.load("tiny", swa_threshold=0.01, swa_anneal_epochs=1, swa_epochs=3, swa_every=1, entropy_steps=2)
    spec = _spec(epochs=4, seed=5)  # SWA: 1 epoch of Adam, then 3 of SWA; entropy-SGD: anchor steps mid-epoch too
    straight, _ = fit(_model(study, source), source, spec, methods.make(method, study),
                      checkpoint=tmp_path / "a.pt")

    def crash(step, model):
        if step == 10:  # in epoch 4 (3 steps per epoch): after the SWA phase started
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(_model(study, source), source, spec, methods.make(method, study),
            checkpoint=tmp_path / "b.pt", step_hook=crash)
    assert len(store.load_checkpoint(tmp_path / "b.pt")["history"]) == 3
    resumed, history = fit(_model(study, source, seed=99), source, spec, methods.make(method, study),
                           checkpoint=tmp_path / "b.pt")
    assert len(history) == 4
    assert "test: resuming after epoch 3" in (tmp_path / "log.txt").read_text(), "the resume is in the run's log"
    # bit for bit: the resumed run restores weights, optimizer, method state and the per-epoch
    # random generators, then does the same operations in the same order as the straight run
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_finished_run_is_loaded_not_retrained(tiny, monkeypatch):
    run = pretraining.pretrain(tiny, "adam", 0)
    assert run.finished and run.weights.is_file() and len(run.history()) == tiny.pretrain_epochs

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(pretraining, "fit", no_training)
    assert pretraining.pretrain(tiny, "adam", 0) == run
    model = runstore.load_model(tiny, run, tiny.source_classes)
    assert torch.equal(model.fc.weight, store.load_tensors(run.weights)["fc.weight"])  # a copy: bit for bit


def test_a_batch_of_runs_logs_its_epochs_in_each_run_folder_and_prints_them_only_when_verbose(capsys, monkeypatch):
    study = Study.load("tiny", methods=["adam"])
    pretraining.pretrain_all(study)
    log = (pretraining.pretrain_run(study, "adam", 0).path / "log.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in log] == ["adam seed 0 epoch 1", "adam seed 0 epoch 2"]
    assert "epoch" not in capsys.readouterr().out, "a notebook shows the batch's bar, not its epochs"
    monkeypatch.setenv(VERBOSE, "1")  # python -m minima run --verbose
    pretraining.pretrain_all(Study.load("tiny", methods=["adam"], pretrain_seeds=[1]))
    assert "adam seed 1 epoch 2: train loss" in capsys.readouterr().out


def test_a_changed_config_makes_a_new_run(tiny):
    other = Study.load("tiny", lr=0.01)
    assert pretraining.pretrain_run(tiny, "adam", 0) != pretraining.pretrain_run(other, "adam", 0)
    assert pretraining.pretrain_run(tiny, "adam", 0) == pretraining.pretrain_run(Study.load("tiny", noise_sigma=0.3), "adam", 0)
    assert pretraining.pretrain_run(tiny, "adam", 0) != pretraining.pretrain_run(tiny, "adam", 1)


class _Exploding(methods.Method):
    def corrupt(self, x, generator):
        return x * float("nan")


def test_a_diverging_run_stops_with_method_seed_and_epoch_and_keeps_the_others(tiny, monkeypatch):
    real = methods.make
    monkeypatch.setattr(methods, "make", lambda name, study: _Exploding() if name == "noisy_adam"
                        else real(name, study))
    with pytest.raises(JobsFailed, match=r"noisy_adam seed 0: the training loss became nan in epoch 1") as err:
        pretraining.pretrain_all(tiny)
    assert isinstance(err.value.failures["noisy_adam-seed0"], TrainingDiverged)
    assert pretraining.pretrain_run(tiny, "adam", 0).finished
    assert pretraining.pretrain_run(tiny, "swa", 0).finished
    assert not pretraining.pretrain_run(tiny, "noisy_adam", 0).finished


def test_training_reduces_the_loss(tiny, source):
    _, history = fit(_model(tiny, source), source, _spec(epochs=4), Adam())
    assert history.train_loss.iloc[-1] < history.train_loss.iloc[0]


def test_a_compiled_run_trains_the_same_weights_and_saves_plain_checkpoints(tiny, monkeypatch):
    # the "eager" backend traces the model with TorchDynamo but runs the same kernels, so any
    # difference comes from the compile path itself (a detached copy, an `_orig_mod.` prefix)
    compiled_models = []
    real = torch.compile

    def eager(model, **kwargs):
        compiled_models.append(model)
        return real(model, backend="eager")

    monkeypatch.setattr(torch, "compile", eager)
    plain = pretraining.pretrain(tiny, "swa", 0)
    weights = store.load_tensors(plain.weights)
    for f in ("final.json", "weights.safetensors", "checkpoint.pt", "epochs.jsonl"):
        (plain.path / f).unlink()
    compiled = pretraining.pretrain(Study.load("tiny", compile=True), "swa", 0)
    assert compiled == plain, "compile is how a run trains, not what it is"
    assert len(compiled_models) == 1
    again = store.load_tensors(compiled.weights)
    assert again.keys() == weights.keys()
    # bit for bit: the eager backend runs the captured graph's own aten ops, the same operations in
    # the same order as the plain run (a real compiler backend would fuse and reorder: not bit for bit)
    assert all(torch.equal(again[k], weights[k]) for k in weights)
