"""Items leave the workers as uint8; the engine normalises (and erases) them on the device.

The previous path normalised on the worker (written out below as ``_worker_normalised``, the
arithmetic of the removed ``datasets.transforms.normalize``): the new one must give the same
model inputs and logits, for test views, validation clips and training batches.
"""
import numpy as np
import torch

import engine
from datasets import build_dataset, collate_eval, collate_train
from datasets.transforms import IMAGENET_MEAN, IMAGENET_STD, ToModelInput, normalize_video
from engine_eval import _forward_eval, final_test
from tests.data_helpers import make_args, textured_frames, write_list, write_video
from tests.helpers import tiny_model


def _data(tmp_path, **kw):
    write_video(str(tmp_path / "a.mp4"), textured_frames(24, 40, 56, seed=1))
    write_video(str(tmp_path / "b.mp4"), textured_frames(24, 48, 40, seed=2))
    for split in ("train", "val", "test"):
        write_list(str(tmp_path / f"{split}.csv"),
                   [(str(tmp_path / "a.mp4"), 0), (str(tmp_path / "b.mp4"), 1)])
    return make_args(str(tmp_path), nb_classes=2, num_frames=4, sampling_rate=2, input_size=32,
                     short_side_size=32, test_num_segment=2, test_num_crop=3, **kw)


def _worker_normalised(clips: torch.Tensor) -> torch.Tensor:
    """The previous worker-side path, per uint8 (3,T,H,W) clip: float32 copy, subtract
    255 * ImageNet mean, divide by 255 * ImageNet std, per channel."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1, 1) * 255.0
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1, 1) * 255.0
    flat = clips.reshape(-1, *clips.shape[-4:])
    out = torch.stack([(c.to(torch.float32) - mean) / std for c in flat])
    return out.reshape(clips.shape)


def test_items_are_uint8_and_a_quarter_of_the_bytes(tmp_path):
    args = _data(tmp_path, num_sample=2, is_aa=True, reprob=0.25)
    train, _ = build_dataset(True, False, args)
    val, _ = build_dataset(False, False, args)
    test, _ = build_dataset(False, True, args)
    for item, shape in [(train[0][0], (2, 3, 4, 32, 32)), (val[0][0], (3, 4, 32, 32)),
                        (test[0][0], (6, 3, 4, 32, 32))]:
        assert item.dtype == torch.uint8 and item.shape == shape
        assert item.element_size() * item.nelement() == int(np.prod(shape))  # 4x fewer than float32


def test_test_logits_normalised_on_the_device_equal_the_worker_path(tmp_path):
    args = _data(tmp_path)
    test, _ = build_dataset(False, True, args)
    views, labels, indices, _ = collate_eval([test[0], test[1]])  # (2, 6, 3, 4, 32, 32) uint8
    clips = views.flatten(0, 1)
    # The inputs are the same bits, so are the logits.
    assert torch.equal(normalize_video(clips), _worker_normalised(clips))
    torch.manual_seed(0)
    model = tiny_model("prompt").eval()
    device = torch.device("cpu")
    with torch.no_grad():
        new = _forward_eval(model, clips, device, None, None)
        old = model(_worker_normalised(clips)).float()
    assert torch.allclose(new, old, atol=1e-5, rtol=0)
    # And through the whole multi-view test loop.
    preds = final_test([(views, labels, indices, [])], model, device, None)
    want = old.softmax(-1).view(2, 6, -1).mean(1)
    for p, w in zip(preds, want):
        assert np.allclose(p["scores"], w.tolist(), atol=1e-6)


def test_validation_clip_normalised_on_the_device_equals_the_worker_path(tmp_path):
    args = _data(tmp_path)
    val, _ = build_dataset(False, False, args)
    clips, _, _, _ = collate_eval([val[0], val[1]])
    assert torch.equal(normalize_video(clips), _worker_normalised(clips))


def test_training_step_normalises_and_erases_on_the_device(tmp_path):
    args = _data(tmp_path, num_sample=2, is_aa=True)
    train, _ = build_dataset(True, False, args)
    np.random.seed(0)
    clips, labels, _ = collate_train([train[0], train[1]])
    torch.manual_seed(0)
    model = tiny_model("end2end")
    seen = []
    model.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].detach().clone()))

    class Backend:  # what the step needs of utils.backend
        device = torch.device("cpu")

        @staticmethod
        def autocast():
            return torch.autocast("cpu", enabled=False)

        @staticmethod
        def cast_input(x):
            return x

    criterion = torch.nn.CrossEntropyLoss()
    step = engine.classification_step(criterion)
    loss, n, _ = step(model, (clips, labels), Backend)
    assert n == 4 and torch.equal(seen[-1], _worker_normalised(clips))
    assert torch.allclose(loss, criterion(model(_worker_normalised(clips)), labels))
    # With erasing (reprob 1): the box is at the same place in every frame and holds N(0, 1)
    # noise in normalised units, new in every frame; the rest of the clip is the normalised clip.
    step = engine.classification_step(criterion, to_input=ToModelInput.for_training(1.0))
    torch.manual_seed(1)
    np.random.seed(1)
    step(model, (clips, labels), Backend)
    erased, plain = seen[-1], _worker_normalised(clips)
    for e, p in zip(erased, plain):
        changed = (e != p).any(dim=0).any(dim=0)  # (H, W) pixels erased in some frame/channel
        assert 0 < changed.float().mean() < 0.5
        box = e[:, :, changed]  # (3, T, pixels)
        assert not torch.equal(box[:, 0], box[:, 1])  # new noise per frame
        assert abs(float(box.mean())) < 0.5 and 0.6 < float(box.std()) < 1.4
        assert torch.equal(e[:, :, ~changed], p[:, :, ~changed])
