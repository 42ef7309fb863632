"""The sweep's pre-check composes once per group choice and applies the plain overrides itself: its
configs must be Hydra's own, to the node types and flags, and every problem of every job still reported."""

from __future__ import annotations

import pytest
from helpers import TINY
from omegaconf import DictConfig, ListConfig, OmegaConf

from peft_bench.errors import ConfigError
from peft_bench.sweep import JobComposer, check_jobs, sweep_jobs

SWEEP = [
    *TINY,
    "rank=2,8",
    "seed=1,7",
    "method.lr=1e-3,${method.weight_decay}",
    "dataset.data_files={train:/a.jsonl},{validation:/v.jsonl,test:/t.jsonl}",
    "trainer.max_epochs=3",
    "method=lora,hira",
]


@pytest.fixture
def hydra_compose():
    """Hydra's compose of a job's overrides, as the sweep callback calls it (inside Hydra)."""
    from hydra import compose, initialize_config_dir

    from peft_bench.config import CONF_DIR

    calls = []

    def composed(job):
        calls.append(job)
        return compose(config_name="config", overrides=[*job, "run_dir=/dev/null"])

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield composed, calls


def nodes(cfg, path=""):
    """Every node of a config: its path, node class, schema and declared types, flags, raw value."""
    yield (
        path,
        type(cfg).__name__,
        cfg._metadata.object_type,
        cfg._metadata.ref_type,
        getattr(cfg._metadata, "key_type", None),
        getattr(cfg._metadata, "element_type", None),
        cfg._get_flag("struct"),
        cfg._get_flag("readonly"),
    )
    keys = cfg.keys() if isinstance(cfg, DictConfig) else range(len(cfg))
    for k in [] if cfg._is_none() or cfg._is_missing() or cfg._is_interpolation() else keys:
        child = cfg._get_node(k)
        if isinstance(child, DictConfig | ListConfig):
            yield from nodes(child, f"{path}.{k}")
        else:
            yield f"{path}.{k}", type(child).__name__, child._metadata.ref_type, child._value()


def test_the_fast_path_gives_hydras_config_for_every_kind_of_override(hydra_compose):
    compose, calls = hydra_compose
    fast = JobComposer(compose)
    jobs = sweep_jobs(SWEEP)
    assert len(jobs) == 32
    merged = [
        *TINY,
        "dataset.data_files={train:/a.jsonl,validation:/v.jsonl}",
        "dataset.data_files={train:/b}",
    ]
    for job in [
        *jobs,
        merged,
        [*TINY, "+dataset.data_files.train=/x.jsonl", "seed=3"],
        [*TINY, "method=ia3"],
    ]:
        got, want = fast(job), compose(job)
        assert list(nodes(got)) == list(nodes(want)), job
        assert OmegaConf.to_container(got, resolve=True) == OmegaConf.to_container(want, resolve=True), job
    # one Hydra compose per group choice (method=lora, =hira, =ia3, the default) and for the `+` job
    assert fast.full == 1 and len(fast.bases) == 4
    assert fast(jobs[0]) is not fast(jobs[0])  # a copy each time: a check that edits one edits no other


@pytest.mark.parametrize(
    "bad", ["method.lr=fast", "trainer.max_epochs=1.5", "no_such_key=1", "method=no_such"]
)
def test_an_override_hydra_refuses_is_refused_with_hydras_own_error(hydra_compose, bad):
    from hydra.errors import ConfigCompositionException

    compose, _ = hydra_compose
    with pytest.raises(ConfigCompositionException) as want:
        compose([*TINY, bad])
    with pytest.raises(ConfigCompositionException) as got:
        JobComposer(compose)([*TINY, bad])
    assert str(got.value) == str(want.value)


def test_every_problem_of_every_job_is_reported_once_and_a_shared_one_once_for_all(hydra_compose):
    compose, calls = hydra_compose
    with pytest.raises(ConfigError) as e:
        check_jobs([*TINY, "rank=1,2,3", "seed=1,-1", "trainer.max_epochs=0", "method.lr=1e-3,-1"], compose)
    problems = e.value.problems
    assert problems == [
        "every job (12): trainer.max_epochs=0: trains nothing; give >= 1 (or trainer.max_steps=)",
        *[p for p in problems if "seed=-1" in p.split(":")[0] or "method.lr=-1" in p.split(":")[0]],
    ]
    assert sum("the 6 jobs with seed=-1: seed=-1: must be in" in p for p in problems) == 1
    assert sum(p.startswith("the 6 jobs with method.lr=-1: method.lr=-1") for p in problems) == 1
    assert len(calls) == 1  # one group choice: Hydra composed once for the 12 jobs


def test_a_sweep_over_datasets_names_each_ones_files_through_an_interpolation(tmp_path):
    """Hydra hands its callbacks hydra.overrides.task resolved against the sweep's config (dataset
    sst2): the pre-check must compose each job from the command line as typed, and each job read its
    own dataset's file (the GLUE sweep of docs/data.md)."""
    import json

    from helpers import run_cli

    rows = {
        "cola": [{"sentence": f"the cat sat {i} times .", "label": i % 2} for i in range(60)],
        "rte": [
            {"sentence1": f"a man walks {i} miles .", "sentence2": f"someone moves {i % 3} .", "label": i % 2}
            for i in range(60)
        ],
    }
    for name, data in rows.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    out = run_cli(
        [
            "-m",
            *TINY,
            "dataset=cola,rte",
            f"dataset.data_files={{train:{tmp_path}/${{dataset.name}}/train.jsonl}}",
            "trainer=fast",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        env={"PEFT_BENCH_CACHE": str(tmp_path / "cache")},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    for i, name in enumerate(rows):
        r = json.loads((tmp_path / "sweep" / str(i) / "results.json").read_text())
        assert r["dataset"] == name and f"{tmp_path}/{name}/train.jsonl" in r["data"]["source"]
