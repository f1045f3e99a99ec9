"""Released classifiers as trained runs (docs/FORMATS.md, 'Released classifiers'): VideoMAE's
fine-tuned ``.pth`` layouts and Hugging Face ``VideoMAEForVideoClassification`` folders, built
here from tiny random models in the published layouts (no downloads), through ``runs.load_run``,
``run_class_apt.py --eval`` and ``tools/predict.py``."""
import argparse
import csv
import os

import pytest
import torch

from models import create_model
from runs import load_run
from tests.engine_helpers import final_record, run_main, tiny_argv
from utils.config import ConfigError

transformers = pytest.importorskip("transformers")

NAMES = ["pushing", "pulling", "spinning"]


def hf_classifier(folder, use_mean_pooling=True, names=NAMES):
    """A random ``VideoMAEForVideoClassification`` of the micro variant (4 frames of 32x32),
    saved with ``save_pretrained``; returns the HF model."""
    torch.manual_seed(3)
    config = transformers.VideoMAEConfig(
        image_size=32, patch_size=16, num_channels=3, num_frames=4, tubelet_size=2,
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
        qkv_bias=True, use_mean_pooling=use_mean_pooling,
        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    hf = transformers.VideoMAEForVideoClassification(config).eval()
    with torch.no_grad():  # non-trivial values everywhere (HF inits norms to 1/0, biases to 0)
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hf.save_pretrained(folder)
    return hf


def videomae_classifier(num_classes=5, use_mean_pooling=True, **kwargs):
    """A fine-tuned ViT whose state dict has VideoMAE's ``modeling_finetune`` names."""
    torch.manual_seed(4)
    return create_model("vit_micro_patch16", num_classes=num_classes, all_frames=4, img_size=32,
                        init_scale=1.0, use_mean_pooling=use_mean_pooling, **kwargs).eval()


CLIP = dict(num_frames=4, input_size=32)


@pytest.mark.parametrize("use_mean_pooling", [True, False])
def test_hf_folder_gives_the_hf_models_logits_and_names(tmp_path, use_mean_pooling):
    hf = hf_classifier(tmp_path / "hf", use_mean_pooling)
    run = load_run(tmp_path / "hf")
    assert run.label_names == NAMES
    model = run.config.model
    assert (model.model, model.transfer_type, model.num_classes, model.num_frames,
            model.input_size, model.use_mean_pooling) == (
        "vit_micro_patch16", "end2end", 3, 4, 32, use_mean_pooling)
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        ref = hf(pixel_values=x.permute(0, 2, 1, 3, 4)).logits  # HF takes (B, T, C, H, W)
        out = run.model.eval()(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("key", ["model", "module"])
@pytest.mark.parametrize("use_mean_pooling", [True, False])
def test_videomae_pth_gives_the_same_logits_as_the_weights_loaded_our_way(tmp_path, key,
                                                                        use_mean_pooling):
    src = videomae_classifier(use_mean_pooling=use_mean_pooling)
    state = src.state_dict()
    assert ("fc_norm.weight" in state) == use_mean_pooling and \
        ("norm.weight" in state) != use_mean_pooling
    path = tmp_path / "videomae_finetuned.pth"
    obj = {key: state, "epoch": 29} if key == "model" else {key: state, "dp_world_size": 8}
    torch.save(obj, path)
    run = load_run(path, overrides=CLIP)
    assert run.config.model.num_classes == 5 and run.label_names == [str(i) for i in range(5)]
    assert run.config.model.use_mean_pooling == use_mean_pooling
    x = torch.randn(3, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(run.model.eval()(x), src(x))


def test_videomae_saved_flags_give_the_clip_shape(tmp_path, caplog):
    src = videomae_classifier()
    path = tmp_path / "k400.pth"
    torch.save({"model": src.state_dict(), "args": argparse.Namespace(
        model="vit_micro_patch16", num_frames=4, input_size=32, sampling_rate=2,
        nb_classes=5, data_set="Kinetics-400")}, path)
    run = load_run(path)
    assert (run.config.data.num_frames, run.config.data.input_size,
            run.config.data.sampling_rate) == (4, 32, 2)
    assert run.config.data.data_set == "custom"  # 5 classes are not Kinetics-400's 400
    assert "does not record its clip shape" not in caplog.text
    bare = tmp_path / "bare.pth"
    torch.save({"model": src.state_dict()}, bare)
    assert load_run(bare).config.data.num_frames == 16  # the default, and said so
    assert "does not record its clip shape: using --num_frames 16 --input_size 224" \
        in caplog.text


def test_a_class_count_that_disagrees_is_refused_naming_both(tmp_path):
    path = tmp_path / "five.pth"
    torch.save({"model": videomae_classifier().state_dict()}, path)
    with pytest.raises(ConfigError) as err:
        load_run(path, overrides={**CLIP, "nb_classes": 7})
    assert str(path) in str(err.value) and "--nb_classes 7" in str(err.value) \
        and "5 classes" in str(err.value)
    assert load_run(path, overrides={**CLIP, "nb_classes": 5}).config.model.num_classes == 5


def test_a_backbone_without_classifier_is_refused(tmp_path, backbone):
    with pytest.raises(ConfigError, match="no classifier.*--finetune"):
        load_run(backbone)


def test_an_unknown_width_names_the_variants(tmp_path):
    state = videomae_classifier().state_dict()
    state["patch_embed.proj.weight"] = torch.zeros(48, 3, 2, 16, 16)
    torch.save({"model": state}, tmp_path / "odd.pth")
    with pytest.raises(Exception, match="width 48, depth 2, patch 16 is no registered variant"):
        load_run(tmp_path / "odd.pth")


def test_eval_of_a_hf_folder_on_a_list_names_its_classes(tmp_path, data, caplog):
    hf_classifier(tmp_path / "hf")
    out = str(tmp_path / "eval")
    # The command line says apt, 16 frames of 224 and Kinetics-400 (the defaults): the
    # checkpoint's flags and class count replace them (the data set's sampling stays).
    argv = tiny_argv(data, out, transfer_type="apt", eval=True, resume=str(tmp_path / "hf"),
                     num_frames=16, input_size=224, nb_classes=None, data_set=None)
    result = run_main(argv)
    record = final_record(out)
    assert record["test_videos"] == 9 and result["final"]["videos"] == 9
    assert "--eval: 3 classes: pushing, pulling, spinning" in caplog.text
    assert "using %s's --num_frames 4 (command line: 16)" % (tmp_path / "hf") in caplog.text
    assert "--data_set Kinetics-400 has 400 classes" in caplog.text
    assert "evaluating as --data_set custom --nb_classes 3" in caplog.text
    # the per-class results are named by id2label, not by indices
    with open(os.path.join(out, "test_per_class.csv"), encoding="utf-8") as f:
        names = [row["name"] for row in csv.DictReader(f)]
    assert names == ["pushing", "pulling", "spinning"]


def test_eval_refuses_a_disagreeing_nb_classes(tmp_path, data):
    hf_classifier(tmp_path / "hf")
    argv = tiny_argv(data, str(tmp_path / "eval"), eval=True, resume=str(tmp_path / "hf"),
                     nb_classes=4)
    with pytest.raises(ConfigError, match=r"--nb_classes 4 disagrees with .*hf, whose "
                                          r"classifier has 3 classes"):
        run_main(argv)


def test_predict_command_line_answers_with_the_hf_names(tmp_path, data, capsys):
    from tools import predict
    hf_classifier(tmp_path / "hf")
    videos = [os.path.join(root, n) for root, _, files in os.walk(data) for n in files
              if n.endswith(".mp4")][:2]
    assert videos
    code = predict.main(["--resume", str(tmp_path / "hf"), *videos, "--topk", "3",
                         "--num_workers", "0", "--device", "cpu", "--test_num_segment", "1",
                         "--test_num_crop", "1"])
    assert code == 0
    table = capsys.readouterr().out
    assert all(name in table for name in NAMES)


def test_eval_of_a_custom_set_takes_the_class_count_of_the_checkpoint(tmp_path, data, caplog,
                                                                      monkeypatch):
    """``--data_set custom`` without ``--nb_classes``: a released ``.pth`` gives its 3 classes
    (the list's), read once; before, the flags were refused before the file was opened."""
    import runs
    path = tmp_path / "videomae_finetuned.pth"
    torch.save({"model": videomae_classifier(num_classes=3).state_dict()}, path)
    reads = []
    real = runs.read_trained_checkpoint
    monkeypatch.setattr(runs, "read_trained_checkpoint",
                        lambda *a, **k: reads.append(a[0]) or real(*a, **k))
    out = str(tmp_path / "eval")
    run_main(tiny_argv(data, out, transfer_type="linear", eval=True, resume=str(path),
                       nb_classes=None))
    assert final_record(out)["test_videos"] == 9
    assert f"--eval: 3 classes, the class count of {path}" in caplog.text
    assert reads == [str(path)]
    with open(os.path.join(out, "eval_args.json"), encoding="utf-8") as f:
        assert '"nb_classes": 3' in f.read()
