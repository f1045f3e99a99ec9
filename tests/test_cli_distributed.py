"""``torchrun --nproc_per_node=2`` on CPU (gloo): training completes, and the sharded final test
gives the same numbers as one process on the same checkpoint, each video counted once."""
import os

import pytest

import engine
import utils
from tests.engine_helpers import NUM_TEST, final_record, read_log, run_cli, run_main, tiny_argv


def test_torchrun_two_processes_match_one_process(tmp_path, data):
    out = str(tmp_path / "ddp")
    # --update_freq 2: accumulation with no_sync across two real processes.
    # --init_scale 1: well separated logits, so float noise between thread counts cannot flip
    # a top-1 decision.
    run_cli(tiny_argv(data, out, "prompt", dist_eval=True, update_freq=2, batch_size=1,
                      init_scale=1.0),
            nproc=2, port=utils.free_port(), timeout=300)
    ddp_final = final_record(out)
    assert ddp_final["test_videos"] == NUM_TEST  # 9 videos on 2 ranks: the padded one once
    assert [r["epoch"] for r in read_log(out) if "epoch" in r] == [0]
    parts = [engine.read_predictions(engine.prediction_file(out, r)) for r in (0, 1)]
    assert [len(p) for p in parts] == [5, 5]  # DistributedSampler padding: 10 slots

    single = str(tmp_path / "single")
    run_main(tiny_argv(data, single, "prompt", eval=True,
                       resume=os.path.join(out, "checkpoint-last.pth")))
    one = final_record(single)
    assert one["test_videos"] == NUM_TEST
    assert (one["Final top-1"], one["Final top-5"]) == (ddp_final["Final top-1"], ddp_final["Final top-5"])
    merged = {p["index"]: p for part in parts for p in part}
    ref = {p["index"]: p for p in engine.read_predictions(engine.prediction_file(single, 0))}
    assert merged.keys() == ref.keys() == set(range(NUM_TEST))
    for i, p in ref.items():
        assert merged[i]["label"] == p["label"]
        assert merged[i]["scores"] == pytest.approx(p["scores"], abs=1e-5)
    # The per-class files (rank 0's, of the merged test): each video once, as one process.
    with open(os.path.join(out, "test_confusion.csv")) as f, \
            open(os.path.join(single, "test_confusion.csv")) as g:
        assert f.read() == g.read()
    assert one["Final mean-class top-1"] == ddp_final["Final mean-class top-1"]
