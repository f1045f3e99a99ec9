"""``make compare``'s built-in protocol of the demo worlds (``tools/worlds.py`` protocol_spec):
an equal budget per method, and every job a command line that ``run_class_apt.py`` accepts."""
import itertools

import pytest

import run_class_apt
from tools.worlds import PROTOCOL_GRIDS, protocol_spec, world_config
from utils.sweep import SweepSpec, val_jobs


@pytest.mark.parametrize("world", ["motion", "pairs", "relations"])
def test_world_protocol_is_fair_and_every_job_parses(world, tmp_path):
    cfg = world_config(world)
    spec = protocol_spec(cfg, str(tmp_path / "data"), "backbone.pth", str(tmp_path / "cache"))
    # The JSON round trip re-runs the spec's checks (equal grids, >= 3 seeds, no reserved flag).
    again = SweepSpec.from_dict(spec.to_dict())
    assert [m.name for m in again.methods] == [m.name for m in spec.methods]
    assert [m.name for m in spec.methods] == list(PROTOCOL_GRIDS)
    sizes = {m.name: len(list(itertools.product(*m.grid.values()))) for m in spec.methods}
    assert set(sizes.values()) == {4}, sizes
    assert {"lr", "prompt_num_tokens"} == set(dict(spec.methods[3].grid)), "APT: lr x prompts"
    jobs = val_jobs(spec, str(tmp_path / "sweep"))
    assert len(jobs) == 4 * len(spec.methods) * len(spec.val_seeds)
    parser = run_class_apt.get_args_parser()
    for *_, job in jobs:
        script = job.command.index(next(a for a in job.command if a.endswith("run_class_apt.py")))
        args = parser.parse_args(job.command[script + 1:])
        assert args.skip_test and args.epochs == cfg.finetune_epochs  # val never reads test
        assert args.cache_videos and args.cache_dir == str(tmp_path / "cache")
        assert args.nb_classes == cfg.num_classes and args.input_size == cfg.input_size
