"""The package's shape, read from its source (ast only: nothing is imported or trained): short functions,
no import cycles, imports that point down the layers (DESIGN.md's target layout), and imports inside
functions only where a reason is written down."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import ROOT

PACKAGE = ROOT / "peft_bench"
MAX_FUNCTION_LINES = 80

# {qualified name: why it stays longer than MAX_FUNCTION_LINES}. Keep it empty: split a long function
# into named steps instead of adding to it.
LONG_FUNCTIONS: dict[str, str] = {}

# The layers, lowest first. A module imports only from lower layers, or from its own entry (a package's
# modules import each other: methods.lora -> methods.adapter). An entry covers a module and, as a
# package, every module under it, so a file split into a package keeps its place. Every module must
# be in exactly one entry: a new one is placed here on purpose.
LAYERS: list[tuple[str, list[str]]] = [
    ("leaves: import nothing of peft_bench", ["errors", "tasks", "measure", "loggers"]),
    ("files and names", ["io", "resolvers", "env"]),
    ("records", ["results", "predictions", "ranks", "flops", "ledger"]),
    ("schemas", ["config"]),
    ("inputs", ["models", "data"]),
    ("callbacks: act on a module through its hooks", ["callbacks"]),
    ("the other pieces of a run: neither imports the other", ["checks", "methods"]),
    ("a run", ["train"]),
    ("many runs, and reading them", ["sweep", "report"]),
    ("tools over them", ["sweep_summary", "prepare", "prepare_smollm2"]),
    ("tuning", ["tune"]),
    ("the entry point", ["__main__"]),
]

# Edges the issue names (module, or package, -> module or package), forbidden whatever the layers say. A
# method may bring its own callback (Sparse LoRA's pruning); what every method shares may not.
FORBIDDEN = [
    ("train", "sweep", "a run does not know the sweep it belongs to"),
    ("methods.base", "callbacks", "what every method shares does not depend on one method's callback"),
    ("methods.adapter", "callbacks", "what every adapter shares does not depend on one method's callback"),
    ("tune", "__main__", "the entry point dispatches to tune, not the other way round"),
]


def under(module: str, entry: str) -> bool:
    return module == entry or module.startswith(entry + ".")


# Imports inside functions, per entry (as LAYERS: a package counts all its modules): at most this many
# import statements, for this reason. Any other module imports at its top.
LOCAL_IMPORTS: dict[str, tuple[int, str]] = {
    "__main__": (1, "start-up time: `peft-bench report|prepare|tune` and --help do not load torch/Lightning"),
    "checks": (2, "torch, Lightning's precision table: start-up time of the config checks (sweep pre-check)"),
    "env": (
        3,
        "datasets, lightning, transformers read HF_HUB_OFFLINE at import: after the Hub check sets it",
    ),
    "errors": (1, "errors is a leaf: it reads HydraConfig only when it names a prepare command"),
    "methods": (
        4,
        "safetensors, peft's tuner internals and bitsandbytes: only when exporting, counting adapter layers, "
        "trying a method on a 4-bit layer, or starting LoftQ on a 4-bit base",
    ),
    "models": (4, "bitsandbytes (optional: 4-bit bases only) and what only a 4-bit load needs"),
    "prepare": (4, "huggingface_hub and the tokenizers: only the steps that fetch or tokenize need them"),
    "prepare_smollm2": (1, "transformers: only the conversion needs it"),
    "report": (3, "matplotlib, wandb: slow or optional; a table-only report needs neither"),
    "sweep_summary": (3, "hydra's compose and parser, torch: only when a sweep is checked or summarised"),
    "tasks": (
        29,
        "torch and torchmetrics (numpy, scipy for the report's resampled figures): config imports tasks, "
        "so a leaf stays light for --help, the report and the config checks",
    ),
    "tune": (
        4,
        "start-up time: `peft-bench tune --help` answers before torch, transformers and Lightning load",
    ),
}


# ------------------------------------------------------------------------------ reading the source


def modules() -> dict[str, Path]:
    """Module name relative to peft_bench ("io", "methods.lora", "__main__") -> its file."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts).removesuffix(".__init__").removesuffix("__init__")
        if name:  # peft_bench/__init__.py itself is empty
            found[name] = path
    return found


def imported(node: ast.Import | ast.ImportFrom, module: str, path: Path, known: set[str]) -> set[str]:
    """The peft_bench modules an import statement of `module` (at `path`) imports (relative to peft_bench)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from its package
            package = path.relative_to(PACKAGE).parent.parts  # `from .` is the file's own package
            package = package[: len(package) - (node.level - 1)]
            base = ".".join(["peft_bench", *package, *([base] if base else [])])
        names = [f"{base}.{a.name}" for a in node.names] + [base]
    out = set()
    for name in names:
        if not name.startswith("peft_bench."):
            continue
        name = name.removeprefix("peft_bench.")
        while name and name not in known:  # a name imported from a module, not a module
            name = name.rpartition(".")[0]
        if name and name != module:
            out.add(name)
    return out


@dataclass
class Imports:
    """The peft_bench modules one module imports, by where its import statements are."""

    top: set[str] = field(default_factory=set)  # at module level: run at import
    type_only: set[str] = field(default_factory=set)  # under `if TYPE_CHECKING:`: never run
    inner: set[str] = field(default_factory=set)  # inside functions
    local: int = 0  # import statements inside functions (of any package)


def imports(module: str, path: Path, known: set[str]) -> Imports:
    out = Imports()

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                getattr(out, where).update(imported(child, module, path, known))
                out.local += where == "inner"
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                visit(child, "inner")
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test) and where == "top":
                for stmt in child.body:
                    visit(ast.Module(body=[stmt], type_ignores=[]), "type_only")
                for stmt in child.orelse:
                    visit(ast.Module(body=[stmt], type_ignores=[]), "top")
            else:
                visit(child, where)

    visit(ast.parse(path.read_text()), "top")
    return out


def entry_of(module: str, entries: list[str]) -> str | None:
    """The entry (of LAYERS, LOCAL_IMPORTS) that covers a module: itself, or the package it is in."""
    covering = [e for e in entries if module == e or module.startswith(e + ".")]
    return max(covering, key=len) if covering else None


def graph() -> dict[str, Imports]:
    found = modules()
    return {m: imports(m, p, set(found)) for m, p in found.items()}


# ------------------------------------------------------------------------------ the rules


def test_no_function_is_longer_than_80_lines():
    long = {}
    for module, path in modules().items():

        def visit(node: ast.AST, prefix: str) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    name = f"{prefix}.{child.name}"
                    lines = child.end_lineno - child.lineno + 1
                    if not isinstance(child, ast.ClassDef) and lines > MAX_FUNCTION_LINES:
                        long[name] = lines
                    visit(child, name)
                else:
                    visit(child, prefix)

        visit(ast.parse(path.read_text()), f"peft_bench.{module}")
    print("functions over", MAX_FUNCTION_LINES, "lines:", long or "none")
    stale = sorted(set(LONG_FUNCTIONS) - set(long))
    assert not stale, f"LONG_FUNCTIONS lists functions that are short now (or gone): {stale}"
    over = {name: lines for name, lines in long.items() if name not in LONG_FUNCTIONS}
    assert not over, "split into named steps (or allow with a reason in LONG_FUNCTIONS): " + ", ".join(
        f"{name} ({lines} lines)" for name, lines in sorted(over.items())
    )


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other (strongly connected components, Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return found


def test_no_import_cycles_at_module_level():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the finder finds
    found = cycles({m: i.top for m, i in graph().items()})
    assert not found, "modules that import each other (module level): " + " | ".join(map(str, found))


def test_imports_point_down_the_layers():
    layer_of = {name: i for i, (_, names) in enumerate(LAYERS) for name in names}
    entries = list(layer_of)
    g = graph()
    unplaced = sorted(m for m in g if entry_of(m, entries) is None)
    assert not unplaced, f"modules in no layer (place each in LAYERS): {unplaced}"
    upward, forbidden = [], []
    for module, found in sorted(g.items()):
        here = entry_of(module, entries)
        for target in sorted(found.top | found.type_only | found.inner):
            there = entry_of(target, entries)
            where = (
                ""
                if target in found.top
                else " (type only)"
                if target in found.type_only
                else " (inside a function)"
            )
            named = [why for a, b, why in FORBIDDEN if under(module, a) and under(target, b)]
            if named:
                forbidden.append(f"{module} -> {target}{where}: {named[0]}")
            elif there != here and layer_of[there] >= layer_of[here]:
                layers = f"[{LAYERS[layer_of[here]][0]}] -> [{LAYERS[layer_of[there]][0]}]"
                upward.append(f"{module} -> {target}{where}: {layers}")
    assert not forbidden and not upward, (
        "imports the design forbids:\n  "
        + "\n  ".join(forbidden or ["none"])
        + "\nimports that point up (or across) the layers:\n  "
        + "\n  ".join(upward or ["none"])
    )


def test_imports_inside_functions_only_where_a_reason_allows():
    counts: dict[str, int] = {}
    for module, found in graph().items():
        if found.local:
            entry = entry_of(module, list(LOCAL_IMPORTS)) or module
            counts[entry] = counts.get(entry, 0) + found.local
    print("import statements inside functions:", dict(sorted(counts.items())), "total", sum(counts.values()))
    unlisted = {m: n for m, n in counts.items() if m not in LOCAL_IMPORTS}
    assert not unlisted, (
        f"imports inside functions with no reason in LOCAL_IMPORTS (import at the top): {unlisted}"
    )
    more = {m: f"{n} > {LOCAL_IMPORTS[m][0]}" for m, n in counts.items() if n > LOCAL_IMPORTS[m][0]}
    assert not more, f"more imports inside functions than LOCAL_IMPORTS allows: {more}"
    stale = sorted(m for m in LOCAL_IMPORTS if m not in counts)
    assert not stale, f"LOCAL_IMPORTS lists modules without imports inside functions now: {stale}"
