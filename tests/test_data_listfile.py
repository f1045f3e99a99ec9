"""List files: separators, paths with spaces, path resolution, and the errors (file + line)."""
import os

import pytest

import run_class_apt
from datasets import ListFileError, build_dataset, num_classes_for, parse_list_file
from tests.data_helpers import make_args, write_list


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_separators_and_spaces_in_paths(tmp_path):
    text = ("/abs/a.mp4 0\n"
            "rel/b.mp4\t1\n"
            "rel/c.mp4     2   \n"
            "\n"
            "# a comment\n"
            "my videos/clip with spaces.mp4  3\n"
            "tab\tsep\tpath.mp4\t1\r\n")
    records = parse_list_file(_write(tmp_path / "train.csv", text), nb_classes=4)
    base = str(tmp_path)
    assert [(r.path, r.label, r.line) for r in records] == [
        ("/abs/a.mp4", 0, 1),
        (os.path.join(base, "rel/b.mp4"), 1, 2),
        (os.path.join(base, "rel/c.mp4"), 2, 3),
        (os.path.join(base, "my videos/clip with spaces.mp4"), 3, 6),
        (os.path.join(base, "tab\tsep\tpath.mp4"), 1, 7),
    ]


def test_data_root_prefixes_relative_paths_only(tmp_path):
    path = _write(tmp_path / "val.csv", "rel/a.mp4 0\n/abs/b.mp4 1\n")
    records = parse_list_file(path, 2, data_root="/data/ucf")
    assert [r.path for r in records] == ["/data/ucf/rel/a.mp4", "/abs/b.mp4"]


@pytest.mark.parametrize("line,needle", [
    ("lonely_field.mp4", "expected '<path> <label>'"),
    ("a.mp4 three", "is not an integer"),
    ("a.mp4 1.5", "is not an integer"),
])
def test_malformed_line_names_file_and_line(tmp_path, line, needle):
    path = _write(tmp_path / "train.csv", f"ok.mp4 0\n\n{line}\nok2.mp4 1\n")
    with pytest.raises(ListFileError) as info:
        parse_list_file(path, 2)
    assert f"{path}:3:" in str(info.value) and needle in str(info.value)


@pytest.mark.parametrize("label", [5, -1])
def test_label_out_of_range(tmp_path, label):
    path = _write(tmp_path / "val.csv", f"a.mp4 0\nb.mp4 {label}\n")
    with pytest.raises(ListFileError, match=rf"{path}:2: label {label} out of range \[0, 5\)"):
        parse_list_file(path, 5)


def test_class_count_mismatch_in_training_list(tmp_path):
    path = _write(tmp_path / "train.csv", "a.mp4 0\nb.mp4 1\nc.mp4 2\n")
    with pytest.raises(ListFileError) as info:
        parse_list_file(path, 4, require_all_classes=True)
    msg = str(info.value)
    assert path in msg and "3 distinct classes" in msg and "--nb_classes is 4" in msg
    assert "never used: 3" in msg
    # A validation list may lack classes: only the range is checked there.
    assert len(parse_list_file(path, 4)) == 3


def test_empty_and_missing_list(tmp_path):
    with pytest.raises(ListFileError, match="no videos listed"):
        parse_list_file(_write(tmp_path / "test.csv", "\n# nothing\n"), 3)
    with pytest.raises(ListFileError, match="list file not found"):
        parse_list_file(str(tmp_path / "nope.csv"), 3)


def test_build_dataset_picks_split_files(tmp_path):
    for split, n in (("train", 4), ("val", 2), ("test", 3)):
        write_list(str(tmp_path / f"{split}.csv"), [(f"{split}{i}.mp4", i % 4) for i in range(n)])
    args = make_args(str(tmp_path))
    assert len(build_dataset(True, False, args)[0]) == 4
    assert len(build_dataset(False, False, args)[0]) == 2
    assert len(build_dataset(False, True, args)[0]) == 3
    assert build_dataset(True, True, args)[0].mode == "train"  # is_train wins, as in VideoMAE


def test_class_counts_of_known_data_sets(tmp_path):
    for name, n in (("UCF101", 101), ("HMDB51", 51), ("SSV2", 174), ("Kinetics-400", 400)):
        assert num_classes_for(name) == n
        assert num_classes_for(name, n) == n
        with pytest.raises(ValueError, match="--nb_classes 10 contradicts --data_set"):
            num_classes_for(name, 10)
    assert num_classes_for("custom", 7) == 7
    with pytest.raises(ValueError, match="--nb_classes"):
        num_classes_for("custom")
    with pytest.raises(ValueError, match="unknown --data_set"):
        num_classes_for("ImageNet")


def test_ucf101_training_list_must_cover_101_classes(tmp_path):
    write_list(str(tmp_path / "train.csv"), [(f"v{i}.avi", i) for i in range(100)])
    with pytest.raises(ListFileError, match="100 distinct classes found but --nb_classes is 101"):
        build_dataset(True, False, make_args(str(tmp_path), data_set="UCF101", nb_classes=101))
    write_list(str(tmp_path / "train.csv"), [(f"v{i}.avi", i) for i in range(101)])
    ds, nb = build_dataset(True, False, make_args(str(tmp_path), data_set="UCF101", nb_classes=None))
    assert nb == 101 and len(ds) == 101


def test_invalid_flags_are_named(tmp_path):
    write_list(str(tmp_path / "val.csv"), [("a.mp4", 0)])
    with pytest.raises(ValueError, match="--short_side_size"):
        build_dataset(False, False, make_args(str(tmp_path), input_size=64, short_side_size=32))
    with pytest.raises(ValueError, match="--video_backend"):
        build_dataset(False, False, make_args(str(tmp_path), video_backend="cv2"))
    # --num_segments is a compatibility flag of the command line, refused there for values
    # other than 1 (the one check, run_class_apt.COMPAT_FLAGS)
    with pytest.raises(ValueError, match="--num_segments"):
        run_class_apt.make_config(run_class_apt.get_args_parser().parse_args(
            ["--data_path", str(tmp_path), "--num_segments", "2"]))
    with pytest.raises(ValueError, match="--aa"):
        write_list(str(tmp_path / "train.csv"), [(f"a{i}.mp4", i) for i in range(4)])
        build_dataset(True, False, make_args(str(tmp_path), is_aa=True, aa="auto-bogus"))
