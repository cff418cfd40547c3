import math

import pandas as pd
import pytest
import safetensors.torch
import torch
import yaml
from torch import nn

from minima import data, landscape, models, pretraining, prose, store, tables, zoo
from minima.config import Study
from minima.evaluation import eval_mode, evaluate, recompute_bn, to_input
from networks import random_model
from tolerances import mean_loss_two_ways


@pytest.fixture
def splits(source):
    return {"train": (source.x_train[:40], source.y_train[:40]), "test": (source.x_test, source.y_test)}


@pytest.fixture
def three(tiny, source):
    return [random_model(tiny, source, seed) for seed in (1, 2, 3)]


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_slice_ends_reproduce_each_end_model_exactly(tiny, source, splits, three):
    a, b, work = three
    rows = landscape.linear_slice(work, a.state_dict(), b.state_dict(), landscape.slice_points(5, 0.25),
                                  splits, ["interpolate"])
    for t, model in ((0.0, a), (1.0, b)):
        for split, (x, y) in splits.items():
            got = rows[(rows.t == t) & (rows.split == split)].iloc[0]
            want = evaluate(model, x, y)
            # bit for bit: lerp is exact at t = 0 and 1 (torch's lerp: a + t (b - a) below 0.5,
            # b - (b - a)(1 - t) above), so the slice evaluates the very weights of the end model,
            # with the same evaluate(), the same operations in the same order
            assert (got.loss, got.accuracy) == (want["loss"], want["accuracy"]), (t, split)


def test_distances_are_euclidean_by_group_and_ignore_running_statistics():
    model = nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))
    a = {"0.weight": torch.tensor([[1.0, 1.0]]), "0.bias": torch.tensor([0.0]), "1.weight": torch.tensor([1.0]),
         "1.bias": torch.tensor([0.0]), "1.running_mean": torch.tensor([0.0]), "1.running_var": torch.tensor([1.0]),
         "1.num_batches_tracked": torch.tensor(0)}
    b = dict(a, **{"0.weight": torch.tensor([[4.0, 5.0]]), "1.weight": torch.tensor([3.0]),
                   "1.running_mean": torch.tensor([50.0]), "1.running_var": torch.tensor([100.0]),
                   "1.num_batches_tracked": torch.tensor(1000)})
    d = landscape.distances({("x", 0): a, ("y", 0): b}, model).set_index(["method_a", "method_b", "group"])
    # small whole numbers, distances in float64: pytest.approx's default rel=1e-6 covers the few
    # float64 roundings (~1e-16 each) of a sum of squares and a square root, and no wrong formula
    assert d.loc[("x", "y", "non_bn"), "distance"] == pytest.approx(5.0)  # sqrt(3^2 + 4^2 + 0^2)
    assert d.loc[("x", "y", "bn"), "distance"] == pytest.approx(2.0)
    assert d.loc[("x", "y", "all"), "distance"] == pytest.approx(math.sqrt(29))
    assert d.loc[("x", "y", "all"), "relative_a"] == pytest.approx(math.sqrt(29) / math.sqrt(3))
    assert d.loc[("x", "x", "all"), "distance"] == 0  # exact: a - a is 0 in floating point


def test_distances_are_symmetric_zero_to_itself_and_find_batchnorm_by_module_type(tiny, three):
    states = {("m", i): m.state_dict() for i, m in enumerate(three)}
    d = landscape.distances(states, three[0])
    assert len(d) == 3 * 3 * 3
    same = d[d.pretrain_seed_a == d.pretrain_seed_b]
    assert (same.distance == 0).all()  # exact: a - a is 0 in floating point
    table = d.pivot_table(index=["group", "pretrain_seed_a"], columns="pretrain_seed_b", values="distance")
    for group in landscape.GROUPS:
        m = table.loc[group].to_numpy()
        # exact: a - b is -(b - a) to the bit (rounding is symmetric), so the squares and their sum are equal
        assert (m == m.T).all() and (m[~torch.eye(3, dtype=bool).numpy()] > 0).all()
    bn = sum(p.numel() for n, p in three[0].named_parameters() if n in models.batchnorm_names(three[0]))
    assert bn > 0 and (d[d.group == "bn"].parameters == bn).all()
    assert any("downsample.1" in n for n in models.batchnorm_names(three[0]))
    layers = landscape.layer_distances(states, three[0])
    assert set(layers.group) == {"bn", "non_bn"} and (layers.distance > 0).all()


def test_recompute_on_two_copies_of_one_model_gives_its_numbers_after_recompute(tiny, source, splits, three):
    model, _, work = three
    recompute_x = source.x_train[:32]
    rows = landscape.linear_slice(work, model.state_dict(), model.state_dict(), [-0.25, 0.5, 1.25],
                                  splits, ["recompute"], recompute_x)
    recompute_bn(model, recompute_x)
    for split, (x, y) in splits.items():
        want = evaluate(model, x, y)
        got = rows[rows.split == split]
        # bit for bit: with start == end, lerp gives a + t * 0 = a exactly for any t (both of torch's
        # lerp branches), so the slice recomputes the statistics of the very same weights on the same
        # images and evaluates them with the same operations as this test
        assert got.loss.tolist() == [want["loss"]] * 3
        assert got.accuracy.tolist() == [want["accuracy"]] * 3


def _logit_scale(model, x):
    with torch.no_grad(), eval_mode(model):
        return model(to_input(x)).abs().max().item()


def test_plane_points_at_the_three_minima_reproduce_their_losses(tiny, splits, three):
    work = random_model(tiny, data.load_task(tiny, "source"), 9)
    rows = landscape.plane(work, [m.state_dict() for m in three], ["a", "b", "c"], 3, 0.2, splits, "interpolate")
    assert len(rows) == (3 * 3 + 3) * len(splits)
    grid = rows[rows.point == "grid"]
    for model, label in zip(three, "abc"):
        at = rows[(rows.point == "minimum") & (rows.label == label)]
        assert grid.x.min() < at.x.iloc[0] < grid.x.max() and grid.y.min() < at.y.iloc[0] < grid.y.max()
        for split, (x, y) in splits.items():
            got = at[at.split == split].iloc[0]
            want = evaluate(model, x, y)
            # alpha, beta are exactly 0 or 1 there (bx / bx, cy / cy, cx - cx in float64), but the
            # weights are a + (b - a) and a + (c - a) in float32: within 3 roundings of b's or c's
            # weights (relative to the larger of the two), which the forward-pass rule counts as 3
            # more roundings per weight (tests/tolerances.py); evaluate() is otherwise the same
            tol = mean_loss_two_ways(model, len(y), _logit_scale(model, x), want["loss"], extra=3)
            assert abs(got.loss - want["loss"]) <= tol
            # accuracies are argmax counts: equal unless two logits of an image are within ~1e-3 relative
            assert got.accuracy == want["accuracy"]
    minima = rows[rows.point == "minimum"].drop_duplicates("label").set_index("label")
    # exact: alpha and beta are bx / bx, cy / cy and (cx - 1.0 * cx) / bx in float64
    assert minima[["alpha", "beta"]].values.tolist() == [[0, 0], [1, 0], [0, 1]]


def test_slice_and_plane_restore_the_model_and_read_no_file(tiny, splits, three, monkeypatch):
    a, b, work = three
    before = _state(work)

    def no_reading(*args, **kwargs):
        raise AssertionError("a file was read during a slice")

    for owner, name in ((store, "load_tensors"), (torch, "load"), (safetensors.torch, "load_file")):
        monkeypatch.setattr(owner, name, no_reading)
    landscape.linear_slice(work, a.state_dict(), b.state_dict(), [-0.25, 0.5, 1.25], splits,
                           ["interpolate", "keep", "recompute"], splits["train"][0])
    landscape.plane(work, [m.state_dict() for m in three], list("abc"), 3, 0.1, splits, "recompute",
                    splits["train"][0])
    after = work.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_slice_from_the_models_own_state_leaves_that_state_intact(tiny, splits, three):
    a, b, _ = three
    before = _state(a)
    landscape.linear_slice(a, a.state_dict(), b.state_dict(), [0.5], splits, ["interpolate"])
    assert all(torch.equal(before[k], v) for k, v in a.state_dict().items())


def test_barrier_is_the_largest_excess_over_the_line_between_the_ends():
    t = [-0.5, 0.0, 0.25, 0.5, 1.0, 1.5]
    slices = pd.DataFrame(dict(pair="p", bn_mode="keep", split="test", t=t,
                               loss=[9.0, 1.0, 2.0, 3.0, 2.0, 9.0], accuracy=[0.0, 0.9, 0.8, 0.5, 0.7, 0.0]))
    row = landscape.barriers(slices).iloc[0]
    # float64 arithmetic on small exact values: the default rel=1e-6 covers its few roundings
    assert row.barrier == pytest.approx(3.0 - 1.5) and row.t_peak == 0.5
    assert row.accuracy_drop == pytest.approx(0.8 - 0.5)


def test_bad_bn_mode_is_refused_before_any_work(splits, three):
    with pytest.raises(ValueError, match="interpolate, keep, recompute"):
        landscape.linear_slice(three[0], three[1].state_dict(), three[2].state_dict(), [0.0], splits, ["mean"])
    with pytest.raises(ValueError, match="recompute_x"):
        landscape.linear_slice(three[0], three[1].state_dict(), three[2].state_dict(), [0.0], splits, ["recompute"])


def test_study_tables_on_tiny(tiny):
    slices = tables.slices(tiny)
    ts = landscape.slice_points(tiny.slice_steps, tiny.slice_margin)
    pairs = landscape.slice_pairs(tiny)
    assert len(slices) == len(pairs) * len(tiny.bn_modes) * 2 * len(ts)
    bars = tables.barriers(tiny)
    assert len(bars) == len(pairs) * len(tiny.bn_modes) * 2 and (bars.barrier >= 0).all()
    assert tables.path(tiny, "landscape_barriers").is_file()
    dist = tables.distances(tiny)
    assert len(dist) == (len(tiny.methods) * len(tiny.pretrain_seeds)) ** 2 * 3
    plane = tables.plane(tiny)
    assert set(plane[plane.point == "minimum"].label) == set(tiny.methods[:3]), "the plane goes through the first three methods"



def test_the_plane_passes_over_a_minimum_identical_to_an_earlier_one(tmp_path, tiny):
    """A zoo whose second group holds the very weights of its first (as a sweep exported at noise_sigma 0 holds
    Adam's): two identical minima span no plane, so the second is passed over."""
    for name, seed in (("a", 0), ("b", 0), ("c", 1), ("d", 2)):
        torch.manual_seed(seed)
        store.save_tensors(tmp_path / "zoo" / f"{name}.safetensors", models.model_for(tiny, 5).state_dict())
        store.write_text(tmp_path / "zoo" / f"{name}.yaml", yaml.safe_dump(
            dict(arch=tiny.arch, width=tiny.width, source=zoo.study_source(tiny), group=name)))
    study = Study.load("tiny", zoo=str(tmp_path / "zoo"), sweeps={})
    pretraining.pretrain_all(study)
    assert landscape.plane_keys(study) == [("a", 0), ("c", 0), ("d", 0)]
    (tmp_path / "zoo" / "d.safetensors").unlink()
    (tmp_path / "zoo" / "d.yaml").unlink()
    three = Study.load("tiny", zoo=str(tmp_path / "zoo"), sweeps={})
    assert landscape.plane_keys(three) == [] and tables.plane(three).empty
    assert prose.no_plane_sentence(three).startswith("No plane: no architecture has three methods with distinct")
