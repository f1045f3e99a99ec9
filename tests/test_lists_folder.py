"""``tools/build_lists.py folder`` and ``shots``: lists from a class-per-folder tree, stratified
and seeded, K-shot training lists, their errors, and a run of ``run_class_apt.py`` on them."""
import math
import os
import shutil

import pytest
import torch

from datasets import build_dataset
from datasets.listfile import VIDEO_EXTENSIONS, read_list_lines
from datasets.splits import FolderTreeError, allocate, k_shot, stratified_split
from tests.data_helpers import make_args
from tests.engine_helpers import final_record, run_main, tiny_argv
from tools import build_lists

# Class name -> videos; sizes chosen so that the shares are not whole numbers.
SIZES = {"brush hair": 7, "climb": 10, "dive": 13, "jump": 20, "run": 31}
RATIOS = (0.7, 0.15, 0.15)


def make_tree(root, sizes=SIZES, extras=True):
    """Empty files in the class-per-folder layout (the lists never open the videos)."""
    for cls, n in sizes.items():
        for i in range(n):
            sub = os.path.join(root, cls, "part2" if i % 3 == 0 else "")
            os.makedirs(sub, exist_ok=True)
            ext = VIDEO_EXTENSIONS[i % 4].upper() if i % 5 == 0 else VIDEO_EXTENSIONS[i % 4]
            open(os.path.join(sub, f"v{i:03d}{ext}"), "w").close()
        if extras:
            open(os.path.join(root, cls, "notes.txt"), "w").close()
    if extras:
        open(os.path.join(root, "README.md"), "w").close()
    return str(root)


def read(path):
    return [(p, label) for _, p, label in read_list_lines(str(path))]


def build(root, out, *flags):
    return build_lists.main(["folder", str(root), "--out", str(out), *flags])


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_tree(tmp_path_factory.mktemp("tree"))


def test_folder_lists_are_stratified_and_complete(tree, tmp_path, caplog):
    assert build(tree, tmp_path / "out", "--seed", "3") == 0
    out = tmp_path / "out"
    classes = sorted(SIZES)
    assert (out / "classes.txt").read_text() == "".join(f"{i} {c}\n" for i, c in enumerate(classes))
    lists = {s: read(out / f"{s}.csv") for s in ("train", "val", "test")}
    every = [e for entries in lists.values() for e in entries]
    # Every video exactly once, under the label of its class folder.
    assert len(every) == len(set(every)) == sum(SIZES.values())
    for path, label in every:
        assert path.split("/")[0] == classes[label] and os.path.isfile(os.path.join(tree, path))
    for label, cls in enumerate(classes):
        n = SIZES[cls]
        for split, r in zip(lists, RATIOS):
            got = sum(1 for _, lab in lists[split] if lab == label)
            assert math.floor(n * r + 1e-9) <= got <= math.ceil(n * r - 1e-9), (cls, split, got)
            assert got >= 1
    total = sum(SIZES.values())
    for split, r in zip(lists, RATIOS):  # the totals stay within rounding as well
        assert abs(len(lists[split]) - r * total) < 1, split
    # The files that are not videos are counted and named, not dropped silently.
    assert "5 files under the class folders are not videos" in caplog.text
    assert "brush hair/notes.txt" in caplog.text
    assert "1 files directly in" in caplog.text and "README.md" in caplog.text


def test_the_seed_reproduces_the_split_and_another_seed_changes_it(tree, tmp_path):
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        assert build(tree, tmp_path / name, "--seed", seed) == 0
    files = ("train.csv", "val.csv", "test.csv", "classes.txt")
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    assert (tmp_path / "a" / "val.csv").read_bytes() != (tmp_path / "c" / "val.csv").read_bytes()
    # The order in which the disk lists the videos does not matter.
    entries = [(f"c{i % 3}/v{i}.mp4", i % 3) for i in range(60)]
    names = ["a", "b", "c"]
    assert stratified_split(entries, RATIOS, 5, names) == \
        stratified_split(entries[::-1], RATIOS, 5, names)


def test_allocation_is_within_rounding_for_every_class():
    for n in range(1, 60):
        for ratios in ((0.7, 0.15, 0.15), (0.6, 0.2, 0.2), (0.8, 0.2, 0.0), (0.5, 0.25, 0.25)):
            counts = allocate(n, ratios)
            assert sum(counts) == n
            assert all(abs(c - n * r) < 1 for c, r in zip(counts, ratios)), (n, ratios, counts)
    # A split that would get none of a class comes first, however far behind the others are.
    assert allocate(5, RATIOS, [-9.0, 0.0, 0.0]) == [3, 1, 1]
    # Then the split furthest behind: 10 videos at 0.7/0.15/0.15 give 7,2,1 or 7,1,2, and over
    # two classes each evaluation split gets 3.
    entries = [(f"{c}/{i}.mp4", c) for c in range(2) for i in range(10)]
    split = stratified_split(entries, RATIOS, 0, ["a", "b"])
    assert [len(split[s]) for s in ("train", "val", "test")] == [14, 3, 3]


def test_k_shot_lists_take_exactly_k_per_class_from_train(tree, tmp_path):
    out = tmp_path / "out"
    assert build(tree, out, "--seed", "2", "--shots", "4,1,2") == 0
    train = set(read(out / "train.csv"))
    previous = set()
    for k in (1, 2, 4):
        folder = out / f"{k}shot"
        chosen = read(folder / "train.csv")
        assert sorted(lab for _, lab in chosen) == sorted(list(range(len(SIZES))) * k)
        assert set(chosen) <= train and previous <= set(chosen)  # nested over K
        previous = set(chosen)
        for name in ("val.csv", "test.csv", "classes.txt"):  # untouched
            assert (folder / name).read_bytes() == (out / name).read_bytes()
    # `shots` on the written lists draws the same K-shot list; another seed another one.
    assert build_lists.main(["shots", str(out), "--shots", "2", "--seed", "2",
                             "--out", str(tmp_path / "again")]) == 0
    again = tmp_path / "again" / "2shot"
    assert (again / "train.csv").read_bytes() == (out / "2shot" / "train.csv").read_bytes()
    assert build_lists.main(["shots", str(out), "--shots", "2", "--seed", "9",
                             "--out", str(tmp_path / "other")]) == 0
    assert read(tmp_path / "other" / "2shot" / "train.csv") != read(again / "train.csv")
    # One K alone gives the same list as that K among others.
    assert build_lists.main(["shots", str(out), "--shots", "4", "--seed", "2",
                             "--out", str(tmp_path / "alone")]) == 0
    assert read(tmp_path / "alone" / "4shot" / "train.csv") == read(out / "4shot" / "train.csv")


def test_k_shot_of_official_lists(tmp_path):
    """`shots` on a UCF101-style list folder: the lines chosen keep their paths; val/test and
    classes.txt are copied byte for byte."""
    lists = tmp_path / "ucf"
    lists.mkdir()
    train = [(f"Class{c}/v_Class{c}_g{g:02d}_c01.avi", c) for c in range(4) for g in range(1, 9)]
    (lists / "train.csv").write_text("".join(f"{p} {lab}\n" for p, lab in train))
    (lists / "val.csv").write_text("Class0/x.avi 0\nClass3/y.avi 3\n")
    shutil.copy(lists / "val.csv", lists / "test.csv")
    (lists / "classes.txt").write_text("".join(f"{c} Class{c}\n" for c in range(4)))
    assert build_lists.main(["shots", str(lists), "--shots", "3,5"]) == 0
    for k in (3, 5):
        chosen = read(lists / f"{k}shot" / "train.csv")
        assert set(chosen) <= set(train) and len(chosen) == 4 * k
        assert all(sum(1 for _, lab in chosen if lab == c) == k for c in range(4))
        for name in ("val.csv", "test.csv", "classes.txt"):
            assert (lists / f"{k}shot" / name).read_bytes() == (lists / name).read_bytes()


def test_too_few_videos_for_k_names_the_classes(tree, tmp_path, caplog):
    # 7 videos of 'brush hair' leave 5 for train, 10 of 'climb' leave 7.
    assert build(tree, tmp_path / "out", "--shots", "2,8") == 2
    assert not (tmp_path / "out").exists()  # nothing written
    assert "--shots 8: 2 classes have fewer than 8 videos in the training split" in caplog.text
    assert "class 0 'brush hair' has 5" in caplog.text and "class 1 'climb' has 7" in caplog.text
    with pytest.raises(FolderTreeError, match="class 1 'b' has 1"):
        k_shot([("a/1", 0), ("a/2", 0), ("b/1", 1)], 2, 0, ["a", "b"])
    with pytest.raises(FolderTreeError, match="class 2 '2' has 0"):  # a class with none
        k_shot([("a/1", 0), ("b/1", 1)], 1, 0, ["0", "1", "2"])


def test_tree_errors_name_the_class_or_folder(tmp_path, caplog):
    small = make_tree(tmp_path / "small", {"big": 20, "tiny": 3, "wee": 3}, extras=False)
    assert build(small, tmp_path / "o1") == 2
    assert ("2 classes have too few videos for one in every split (at least 4 needed): "
            "class 1 'tiny' has 3; class 2 'wee' has 3") in caplog.text
    # The same tree fits looser ratios.
    assert build(small, tmp_path / "o2", "--ratios", "0.34,0.33,0.33") == 0
    empty = make_tree(tmp_path / "empty", {"a": 9}, extras=False)
    os.makedirs(os.path.join(empty, "b", "nested"))
    open(os.path.join(empty, "b", "clip.txt"), "w").close()
    os.makedirs(os.path.join(empty, "c"))
    assert build(empty, tmp_path / "o3") == 2
    assert "2 of 3 class folders hold no video" in caplog.text
    assert "'b' (1 other files), 'c'" in caplog.text
    flat = tmp_path / "flat"
    flat.mkdir()
    open(flat / "a.mp4", "w").close()
    assert build(flat, tmp_path / "o4") == 2
    assert "no class folders found" in caplog.text
    assert build(tmp_path / "nowhere", tmp_path / "o5") == 2
    assert "nowhere: not a folder" in caplog.text
    for bad, says in (("0.7,0.3", "three shares"), ("0.5,0.2,0.2", "sum to 0.9"),
                      ("0,0.5,0.5", "train and at least one"), ("a,b,c", "three numbers")):
        assert build(small, tmp_path / "o6", "--ratios", bad) == 2
        assert says in caplog.text
    assert build(small, tmp_path / "o7", "--shots", "0") == 2
    assert "every K must be >= 1" in caplog.text


def test_a_zero_share_lists_the_other_evaluation_split(tree, tmp_path):
    assert build(tree, tmp_path / "out", "--ratios", "0.8,0.2,0") == 0
    assert (tmp_path / "out" / "test.csv").read_bytes() == (tmp_path / "out" / "val.csv").read_bytes()
    assert len(read(tmp_path / "out" / "train.csv")) + len(read(tmp_path / "out" / "val.csv")) \
        == sum(SIZES.values())


def test_run_class_apt_trains_on_the_k_shot_lists(data, tmp_path):
    """Real videos (the synthetic set's class folders), lists built by the tool, then a tiny
    training, validation and test run on the 2-shot folder with --sampling segment."""
    root = os.path.join(data, "videos")  # videos/<class>/<split>_<k>.mp4, 3 classes x 7
    out = tmp_path / "lists"
    assert build(root, out, "--ratios", "0.6,0.2,0.2", "--shots", "2") == 0
    for split in ("train", "val", "test"):
        ds, nb = build_dataset(split == "train", split == "test",
                               make_args(str(out), data_root=root, nb_classes=3))
        assert nb == 3 and len(ds) == len(read(out / f"{split}.csv"))
    run = str(tmp_path / "run")
    run_main(tiny_argv(str(out / "2shot"), run, "linear", data_root=root, sampling="segment",
                       batch_size=2))
    final = final_record(run)
    assert final["test_videos"] == len(read(out / "test.csv"))
    ckpt = torch.load(os.path.join(run, "checkpoint-last.pth"), weights_only=True)
    assert ckpt["args"]["sampling"] == "segment"
