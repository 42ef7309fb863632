"""Reading run folders: every results.json under them, the completed runs kept (each setting's seed
once), the others left out with their reason; runs grouped into settings (a configuration without its
seed) and labelled by what tells them apart; the LoRA setting a method is compared with."""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from peft_bench.config import SCHEMAS, schema_defaults
from peft_bench.resolvers import setting_identity
from peft_bench.results import EDITED, RESULTS_FILE, collect, digest_state, flatten, unfinished_reason
from peft_bench.tasks import Task, task_of

SHORT = {"method.r": "rank", "method.pruning.target": "sparsity"}
REQUIRED = ("method", "dataset", "model", "seed", "trainable_params", "total_params", "train_time_s")
BASELINE = "lora"


@dataclass
class Setting:
    """One configuration of a method on a dataset (resolvers.setting_identity), and its runs over seeds."""

    dataset: str
    method: str
    config: dict  # flattened, the keys that define a setting (resolvers.setting_identity)
    runs: list[dict] = field(default_factory=list)
    label: str = ""  # the keys that tell it apart from the other settings of its dataset

    @property
    def task(self) -> Task:
        return task_of(self.runs[0])

    @property
    def score(self) -> str:  # the primary test metric
        return self.task.score

    @property
    def select_by(self) -> str:  # how the best setting of a method is chosen: validation only
        return self.task.select_by

    @property
    def rank(self):
        return self.config.get("method.r")

    @property
    def seeds(self) -> list[int]:
        return [r["seed"] for r in self.runs]

    def values(self, key: str) -> list[float]:
        return [float(r[key]) for r in self.runs if isinstance(r.get(key), int | float)]

    def mean(self, key: str) -> float | None:
        v = self.values(key)
        return statistics.fmean(v) if v else None


NO_DIGEST = "no digest (written by an older peft_bench): counted as it is"


def load_runs(dirs: list[Path], include_edited: bool = False) -> tuple[list[dict], list[tuple[Path, str]]]:
    """(completed runs, [(folder, why it is left out)] for the unreadable, partial, failed, running,
    stale (killed), edited and duplicate runs). A run of the same setting and seed as one already read
    (the same sweep twice, `rank=4,4`) is left out as a duplicate: seeds are counted once each. A record
    whose digest does not match (changed after its run wrote it) is left out unless `include_edited`;
    then it is counted with a warning."""
    good, left_out, seen = [], [], {}
    for root in dirs:
        if not root.is_dir():
            left_out.append((root, "no such folder"))
            continue
        for run_dir, r in collect(root):
            if (why := unfinished_reason(r)) is not None:
                left_out.append((run_dir, why))
            elif (trust := digest_state(r)) == "edited" and not include_edited:
                left_out.append((run_dir, f"{EDITED} (--include-edited counts it)"))
            elif missing := [k for k in (*REQUIRED, "config") if k not in r] + no_val_scores(r):
                left_out.append((run_dir, f"partial {RESULTS_FILE}: no {', '.join(missing)}"))
            else:
                marks = [f"{EDITED}; counted (--include-edited)"] if trust == "edited" else []
                warnings = [*r.get("warnings", []), *marks]
                r = {**r, "warnings": warnings, "_trust": trust, "_dir": str(run_dir)}
                key = (setting_key(r), r["seed"])
                if key not in seen:
                    seen[key] = r
                    good.append(r)
                    continue
                kept = seen[key]
                if has_test(r) and not has_test(kept):  # the same run once evaluated with test=false:
                    i = next(i for i, g in enumerate(good) if g is kept)  # keep the one with test figures
                    good[i] = seen[key] = r
                    kept, r = r, kept
                left_out.append(
                    (Path(r["_dir"]), f"duplicate of {kept['_dir']} (same setting and seed): counted once")
                )
    return good, left_out


def no_val_scores(r: dict) -> list[str]:
    """[] if the record has a validation figure of its task (val_f1 or val_acc, val_pearson or
    val_spearman, val_ppl), else what it lacks in words."""
    keys = task_of(r).val_scores
    return [] if any(k in r for k in keys) else [" or ".join(keys)]


def has_test(r: dict) -> bool:
    """Whether a run has test figures (one with test=false, as a tuning trial, has validation only)."""
    return isinstance(r.get(task_of(r).score), int | float)


def with_older_defaults(flat: dict) -> dict:
    """A record's flattened config with the keys an older peft_bench did not write (trainer.strategy,
    method.pruning.start_fraction, ...) at their schema default, where the record has the group they
    belong to: a run from before a key existed and one from after are one setting, as skip and resume
    already take them (config.schema_defaults). Not a group's own keys where the group has several
    schemas (method, dataset, logger): LoRA has no l1_lambda to default."""
    several = {g for g, _, _ in SCHEMAS if g and sum(g == h for h, _, _ in SCHEMAS) > 1}
    parents = {k.rsplit(".", 1)[0] for k in flat if "." in k} - several
    older = {
        k: v
        for k, v in schema_defaults().items()
        if k not in flat and "." in k and k.rsplit(".", 1)[0] in parents and not isinstance(v, list | dict)
    }
    return {**older, **flat}


def setting_config(r: dict) -> dict:
    """A run's configuration without its seed, paths and logging; with the tokenized data's cache key
    (the data's content and layout and the tokenizer: the files' paths are left out, their bytes are not)."""
    cfg = setting_identity(with_older_defaults(flatten(r["config"], lists_as_json=True)))
    if isinstance(r.get("data"), dict) and r["data"].get("cache_key"):
        cfg["data.cache_key"] = r["data"]["cache_key"]
    # what trainer.precision=null and accelerator=auto became on the machine that ran it: a bf16 GPU
    # run and an fp32 CPU run of one config are two settings
    if r.get("precision"):
        cfg["resolved.precision"] = r["precision"]
    if r.get("device"):
        cfg["resolved.device"] = str(r["device"]).split(":")[0]
    return cfg


def setting_key(r: dict) -> str:
    return json.dumps([r["dataset"], setting_config(r)], sort_keys=True, default=str)


def settings_of(runs: list[dict]) -> dict[str, list[Setting]]:
    """Runs grouped into settings (same configuration but the seed), per dataset, labelled."""
    by_dataset: dict[str, dict[str, Setting]] = defaultdict(dict)
    for r in runs:
        cfg = setting_config(r)
        key = json.dumps(cfg, sort_keys=True, default=str)
        s = by_dataset[r["dataset"]].setdefault(key, Setting(r["dataset"], r["method"], cfg))
        s.runs.append(r)
    out = {}
    for dataset, group in sorted(by_dataset.items()):
        settings = list(group.values())
        label_settings(settings)
        settings.sort(
            key=lambda s: (s.method != BASELINE, s.method, s.rank if s.rank is not None else -1, s.label)
        )
        for s in settings:
            s.runs.sort(key=lambda r: r["seed"])
        out[dataset] = settings
    return out


def label_settings(settings: list[Setting]) -> None:
    """Label each setting by the config keys that vary across its dataset's settings, skipping a key
    whose value follows from the keys already taken (method.name decides method._target_, rank decides
    lora.r, ...). A float is shown at 3 significant digits (method.lr=0.00839), or at as many as tell
    apart two settings that 3 would label alike (method.lr=0.0012345 and 0.0012346); other values as
    they are."""
    everywhere = set.intersection(*(set(s.config) for s in settings))
    groups = ("method.name", "method.", "model.name", "dataset.", "model.", "trainer.")

    def order(k: str):  # the method's own keys first; keys some runs lack (older schemas) last
        return (
            k not in everywhere and not k.startswith("method."),
            next((i for i, g in enumerate(groups) if k.startswith(g)), len(groups)),
            k.count("."),
            k,
        )

    keys = sorted({k for s in settings for k in s.config}, key=order)
    taken: list[str] = []
    for key in keys:
        if len({json.dumps(s.config.get(key), default=str) for s in settings}) < 2:
            continue
        implied: dict = {}
        if all(
            implied.setdefault(tuple(str(s.config.get(t)) for t in taken), s.config.get(key))
            == s.config.get(key)
            for s in settings
        ):
            continue
        taken.append(key)
    shown = [k for k in taken if k not in ("method.name", "method.r")]
    digits = dict.fromkeys(shown, 3)  # significant digits of each key's floats

    def text(k: str, v) -> str:  # str of the rounded float: 0.00839, 1.0, 1e-05, 12300.0
        return str(float(format(v, f".{digits[k]}g"))) if isinstance(v, float) else str(v)

    def label(s) -> str:
        return " ".join(f"{SHORT.get(k, k)}={text(k, s.config[k])}" for k in shown if k in s.config)

    while True:  # a key whose floats two settings of one label differ in gets one digit more
        alike: dict[str, list] = defaultdict(list)
        for s in settings:
            alike[label(s)].append(s)
        more = {
            k
            for group in alike.values()
            for a in group
            for b in group
            for k in shown
            if digits[k] < 17  # 17 significant digits tell any two floats apart
            and isinstance(a.config.get(k), float)
            and isinstance(b.config.get(k), float)
            and a.config[k] != b.config[k]
        }
        if not more:
            break
        for k in more:
            digits[k] += 1
    for s in settings:
        s.label = label(s)


def baseline_for(s: Setting, settings: list[Setting]) -> Setting | None:
    """The LoRA setting a method is compared with: same model, the same rank if there is one, else the
    best LoRA setting by validation score."""
    if s.method == BASELINE:
        return None
    lora = [
        b
        for b in settings
        if b.method == BASELINE and b.config.get("model.name") == s.config.get("model.name")
    ]
    same_rank = [b for b in lora if s.rank is not None and b.rank == s.rank]
    return best(same_rank or lora)


def best(settings: list[Setting]) -> Setting | None:
    """The setting of the best mean validation score (the task's select_by): highest F1, lowest perplexity."""
    if not settings:
        return None
    sign = -1 if settings[0].task.higher_is_better else 1  # highest F1 or lowest perplexity
    return min(
        settings,
        key=lambda s: sign * (s.mean(s.select_by) if s.mean(s.select_by) is not None else math.inf * sign),
    )


def read_curves(run_dir: Path, val_key: str) -> dict[str, list[tuple[float, float]]]:
    """(step, value) series from the run's CSV log (logger=csv): train loss per logged step, and the
    validation metric `val_key` (the task's curve_metric, e.g. val/mcc) at each validation."""
    out: dict[str, list] = {"train": [], val_key: []}
    for path in sorted(run_dir.glob("csv/**/metrics.csv")):
        with path.open() as f:
            for row in csv.DictReader(f):
                step = float(row["step"]) if row.get("step") else None
                if step is None:
                    continue
                if row.get("train/loss_step"):
                    out["train"].append((step, float(row["train/loss_step"])))
                if row.get(val_key):
                    out[val_key].append((step, float(row[val_key])))
    v = out[val_key]  # the evaluation after fit repeats the last validation a step later
    out[val_key] = [p for i, p in enumerate(v) if i == 0 or p[0] - v[i - 1][0] > 1]
    return out


def nested_values(s: Setting, path: str) -> list[float]:
    """A setting's figures at a dotted results.json key (forgetting.rise), over its runs that have it."""
    out = []
    for r in s.runs:
        v = r
        for part in path.split("."):
            v = v.get(part) if isinstance(v, dict) else None
        if isinstance(v, int | float):
            out.append(float(v))
    return out
