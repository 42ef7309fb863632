"""A method's search space (`method.search`, default: the learning rate over a decade either side of the
method's default), its check against the run's own rules, and the seeded TPE sampler that draws from it."""

from __future__ import annotations

import json
from typing import Any

import optuna
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from peft_bench.checks import check_config, compose_job
from peft_bench.errors import ConfigError


def space(method) -> dict[str, dict]:
    """The method's search space as {config key under method: spec}: spec {low, high, log} (float, or
    int when both bounds are ints) or {choices}. Default: lr, log-uniform over [lr/10, lr*10]. Raises one
    ConfigError naming every malformed key."""
    out, problems = space_and_problems(method)
    if problems:
        raise ConfigError(problems)
    return out


def space_and_problems(method) -> tuple[dict[str, dict], list[str]]:
    """The well-formed keys' specs, and a sentence for each malformed one."""
    given = method.search if getattr(method, "search", None) else {"lr": [method.lr / 10, method.lr * 10]}
    if not isinstance(given, dict):
        raise ConfigError([f"method.search={given!r}: give a mapping, e.g. {{lr: [1e-4, 1e-2]}}"])
    out, problems = {}, []
    for key, spec in dict(given).items():
        try:
            out[key] = key_space(method, key, spec)
        except ConfigError as e:
            problems += e.problems
    return out, problems


def key_space(method, key: str, spec) -> dict:
    """One key's spec, normalised: {low, high, log} or {choices}; ConfigError if it is malformed. A key
    `config.<field>` is a field of a method=peft option's PEFT config (search_problems then checks that
    PEFT's config class has it, and each bound, as a trial's run would)."""
    top = key.split(".", 1)[0]
    if not hasattr(method, top) or ("." in key and not (top == "config" and hasattr(method, "peft_type"))):
        raise ConfigError(
            [
                f"method.search: method {method.name} has no key {key!r} (a key of the method, or "
                "config.<field> of a method=peft option's PEFT config)"
            ]
        )
    if isinstance(spec, list | tuple) and len(spec) == 2:
        spec = {"low": spec[0], "high": spec[1], "log": True}
    if isinstance(spec, dict) and "choices" in spec:
        choices = spec["choices"]
        if (
            not isinstance(choices, list | tuple)
            or not choices
            or not all(c is None or isinstance(c, str | int | float | bool) for c in choices)
        ):
            raise ConfigError(
                [f"method.search.{key}.choices={choices!r}: give a non-empty list of plain values"]
            )
        return {"choices": list(choices)}
    if (
        isinstance(spec, dict)
        and {"low", "high"} <= set(spec)
        and all(isinstance(spec[b], int | float) and not isinstance(spec[b], bool) for b in ("low", "high"))
        and spec["low"] < spec["high"]
    ):
        if spec.get("log", True) and spec["low"] <= 0:
            raise ConfigError(
                [
                    f"method.search.{key}: low={spec['low']} on a log scale; a log-uniform range needs "
                    "low > 0 (or log: false)"
                ]
            )
        return {"low": spec["low"], "high": spec["high"], "log": bool(spec.get("log", True))}
    raise ConfigError(
        [
            f"method.search.{key}={spec!r}: give [low, high] (log-uniform), "
            "{low, high, log} or {choices: [...]}"
        ]
    )


def search_problems(
    run_overrides: list[str], method: str, spec: dict[str, dict], compose=compose_job
) -> list[str]:
    """Every value the search may give a trial (each choice, both bounds of a range) checked as that trial's
    run will be, by composing its config and running check_config (the run's rules, in one place): an
    invalid one is named with the rule it breaks, before a trial of the budget is spent on it."""
    out = []
    for key, s in spec.items():
        values = (
            [("choice", c) for c in s["choices"]]
            if "choices" in s
            else [("low", s["low"]), ("high", s["high"])]
        )
        for what, value in values:
            try:
                check_config(compose([*run_overrides, *with_params(method, {key: value})]))
            except ConfigError as e:
                out += [f"method.search.{key}: the {what} {value!r} is invalid: {p}" for p in e.problems]
            except (HydraException, OmegaConfBaseException) as e:  # a value of the wrong type for the key
                out.append(f"method.search.{key}: the {what} {value!r} is invalid: {str(e).splitlines()[0]}")
    return out


def method_value(method, key: str):
    """The method's own value of a search key (its default, before tuning); a `config.<field>` the
    option's YAML leaves out is None: PEFT's default applies."""
    top, _, field = key.partition(".")
    value = getattr(method, top)
    return (value or {}).get(field) if field else value


def with_params(method: str, params: dict) -> list[str]:
    """A trial's overrides. A config.<field> may be absent from the option's YAML: `++` adds or sets it
    (the other keys keep their plain form, which names the trial's run folder)."""
    return [
        f"method={method}",
        *[  # None -> null, a str quoted
            f"{'++' if '.' in k else ''}method.{k}={json.dumps(v)}" for k, v in params.items()
        ],
    ]


def suggest(trial, spec: dict[str, dict]) -> dict[str, Any]:
    params = {}
    for key, s in spec.items():
        if "choices" in s:
            params[key] = trial.suggest_categorical(key, s["choices"])
        elif isinstance(s["low"], int) and isinstance(s["high"], int):
            params[key] = trial.suggest_int(key, s["low"], s["high"], log=s["log"])
        else:
            params[key] = trial.suggest_float(key, float(s["low"]), float(s["high"]), log=s["log"])
    return params


def sampler(cfg, n: int):
    """TPE for a study's n-th trial, seeded from (tune.sampler_seed, n): every trial draws from a stream of
    its own, so a replacement after a kill or a second worker does not redraw a trial's values, and one
    worker's study is the same on every machine. (One TPESampler per process would restart its stream in
    every worker and on every resume.) Running trials count as bad ones (constant liar), so parallel
    workers spread out."""
    return optuna.samplers.TPESampler(
        seed=(cfg.sampler_seed * 1_000_003 + n) % 2**32,
        n_startup_trials=cfg.startup(),
        constant_liar=True,
    )
