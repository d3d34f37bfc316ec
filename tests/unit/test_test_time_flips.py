"""Test-time flips: the probabilities of an image and of its mirror images, each mapped back, averaged;
a left-right mirror's (left, right) pairs swapped back to the sides they lie on."""
import pytest
import torch

from swinray.config import EvaluateConfig, PredictConfig, SegConfig
from swinray.data.tasks import mirrored_labels
from swinray.models.registry import build_swin_unetr
from swinray.models.segmenter import load_segmenter, save_segmenter
from swinray.seg.inference import Mirrors, predict_probabilities

SIDE = 64            # one window covers the image, so the toy models below see where each voxel lies
LEFT, RIGHT = 1, 2   # classes of a task with one pair


class SideAwareModel(torch.nn.Module):
    """What training with flips and pair swaps teaches: bright tissue is ``LEFT`` in the half of axis
    0 where the left side lies, ``RIGHT`` in the other half, background elsewhere."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        body = (x[:, :1] > 0.5).float()
        left_half = (torch.arange(x.shape[2]) < x.shape[2] // 2).float().view(1, 1, -1, 1, 1)
        return torch.cat([4 * (1 - body), 4 * body * left_half,
                          4 * body * (1 - left_half)], dim=1)


def two_organs() -> torch.Tensor:
    image = torch.zeros(1, 1, SIDE, SIDE, SIDE)
    image[:, :, 8:20, 20:40, 20:40] = 1.0           # an organ on the left side
    image[:, :, 40:56, 24:36, 24:36] = 1.0          # its partner on the right
    return image


def predict(model, image, mirrors=Mirrors()):
    return predict_probabilities(model, image, (SIDE,) * 3, 1, 0.0, mirrors=mirrors)


def test_a_pair_swaps_in_the_mirrored_labels_and_every_other_label_stays():
    assert mirrored_labels(((4, 3),), 6) == [0, 1, 2, 4, 3, 5]
    assert mirrored_labels((), 3) == [0, 1, 2]


def test_a_left_right_mirror_keeps_each_paired_organ_on_its_own_side():
    model, image = SideAwareModel(), two_organs()
    plain = predict(model, image)
    mirrors = Mirrors((0,), tuple(mirrored_labels(((LEFT, RIGHT),), 3)))
    flipped = predict(model, image, mirrors)
    assert torch.equal(flipped.argmax(1), plain.argmax(1))
    assert flipped[0, LEFT, 8:20, 20:40, 20:40].min() > 0.95 and flipped[0, RIGHT, 40:56, 24:36, 24:36].min() > 0.95
    # without the swap back, the mirror's pass calls each organ by the other's name: half and half
    unswapped = predict(model, image, Mirrors((0,), ()))
    assert unswapped[0, LEFT, 8:20, 20:40, 20:40].max() < 0.6


def test_every_combination_of_the_flipped_axes_is_one_pass_each_mapped_back():
    model, image = SideAwareModel(), two_organs()
    plain = predict(model, image)
    model.calls = 0
    probs = predict(model, image, Mirrors((0, 2), tuple(mirrored_labels(((LEFT, RIGHT),), 3))))
    assert model.calls == 4                                  # none, 0, 2, and 0 with 2
    assert torch.allclose(probs.sum(1), torch.ones(1, SIDE, SIDE, SIDE), atol=1e-5)
    assert torch.equal(probs.argmax(1), plain.argmax(1))
    # the organs are not centred along axis 2: a pass left mirrored there would blur their edges
    assert probs[0, LEFT, 8:20, 20:40, 20:40].min() > 0.95 and probs[0, RIGHT, 40:56, 24:36, 24:36].min() > 0.95
    model.calls = 0
    predict(model, image)
    assert model.calls == 1


def test_a_model_file_says_what_its_training_flipped_and_older_files_mean_left_right(tmp_path):
    task = {"name": "t", "label_names": ["background", "LeftKidney", "RightKidney"], "label_pairs": [[1, 2]]}
    kwargs = dict(in_channels=1, out_channels=3, feature_size=12, window_size=4)
    path = save_segmenter(build_swin_unetr(**kwargs), tmp_path / "model.pt", kwargs, (64,) * 3, task,
                          flip_axes=(0, 2))
    _, meta = load_segmenter(path)
    assert Mirrors.of_model(meta) == Mirrors((0, 2), (0, 2, 1))
    assert Mirrors.of_model(meta, enabled=False) == Mirrors()
    older = {k: v for k, v in meta.items() if k != "flip_axes"}           # saved before files recorded it
    assert Mirrors.of_model(older) == Mirrors((0,), (0, 2, 1))
    assert Mirrors.of_model({**meta, "flip_axes": []}) == Mirrors((), (0, 2, 1))
    assert "one pass" in Mirrors().describe() and "2 passes" in Mirrors.of_model(older).describe()


@pytest.mark.parametrize("config", [SegConfig, EvaluateConfig, PredictConfig])
def test_test_time_flips_are_on_by_default_where_a_model_is_scored_or_applied(config):
    assert config().tta_flips is True


def test_evaluate_and_predict_run_the_mirrored_pass_unless_asked_for_one(tmp_path):
    import json

    import nibabel as nib
    from hostile_files import TASK, msd, write_case, write_dataset

    from swinray.seg.evaluate import run_evaluate
    from swinray.seg.predict import run_predict
    root = write_dataset(tmp_path / "Scored", msd([write_case(tmp_path / "Scored", f"case{i}") for i in range(2)]))
    torch.manual_seed(0)
    kwargs = dict(in_channels=1, out_channels=2, feature_size=12, window_size=4)
    model = save_segmenter(build_swin_unetr(**kwargs), tmp_path / "model.pt", kwargs, (64,) * 3,
                           json.loads(json.dumps(TASK.__dict__)))
    scores, label_maps = {}, {}
    for flips in (True, False):
        lines = []
        scores[flips] = run_evaluate(EvaluateConfig(checkpoint=str(model), data=str(root), split="all", tta_flips=flips,
                                                    out_dir=str(tmp_path / f"eval-{flips}")), log=lines.append)
        assert scores[flips]["test_time_flips"] == ([0] if flips else [])
        assert any(f"first case: {2 if flips else 1} windows" in line for line in lines)
        written = run_predict(PredictConfig(checkpoint=str(model), input=str(root / "imagesTr"), tta_flips=flips,
                                            output=str(tmp_path / f"labels-{flips}")), log=lambda m: None)
        assert written["num_written"] == 2 and written["test_time_flips"] == scores[flips]["test_time_flips"]
        label_maps[flips] = [nib.load(f).get_fdata() for f in sorted(written["written"])]
    # an untrained network is no mirror of itself: the mirrored pass changes what is predicted
    assert any((a != b).any() for a, b in zip(label_maps[True], label_maps[False]))
