"""A sandbox for untrusted generated programs (VLM-CaR's reward checks).

Programs written by an LVLM are untrusted input: they may loop forever, allocate without
bound, try to import modules, read or write files, or escape through Python's object
graph. :func:`run_checks` evaluates one program's check function on a whole batch of
inputs in ONE child process (one process per program per batch, not per input) and
reports either the list of booleans or a failure of one kind in :data:`ERROR_KINDS`:

- ``rejected``: the source fails the static check (below) or does not compile;
- ``timeout``: the child exceeded its CPU-time limit, or the parent's wall-clock limit
  (the parent then kills it);
- ``memory``: the child hit its address-space limit (MemoryError, or died of it);
- ``exception``: the program raised (the message names the input index);
- ``bad_output``: no function of that name, a value that is not a bool (None counts as
  False), or a result larger than the output cap;
- ``crash``: the child died any other way, or its output is unreadable.

A failure never raises in the caller; it is a :class:`SandboxResult` with ``ok=False``.

The layers, each of which alone stops the obvious attacks, so an escape needs several holes:

1. Static check in the parent (:func:`check_source`), before any process starts: no
   ``import``, ``global``/``nonlocal``, classes, async code, generators (``yield``) or
   ``match``; no name, attribute, argument or keyword starting with ``_``; no attribute
   that leads to interpreter frames or code (``gi_*``, ``f_*``, ``tb_*``, ``cr_*``, ``ag_*``,
   ``co_*``, ``func_*``, ``mro``) or that formats strings by attribute name (``format``,
   ``format_map``); no use of names such as ``open``, ``eval``, ``exec``, ``getattr``,
   ``type``, ``vars``, ``print``; a length cap.
2. A builtins allow-list (:data:`SAFE_BUILTIN_NAMES`): the program's globals hold nothing else,
   and the module-level code is re-run for every input, so no state leaks between inputs.
3. A separate interpreter, ``python -I -S -B`` (isolated: no environment variables, no
   user or site packages, no bytecode writes), started with an empty environment, in an
   empty temporary working directory, in its own session, with every inherited file
   descriptor closed; stdin carries the JSON payload, stdout is a private temporary file
   for the result and stderr another (capped, read only for diagnostics).
4. Kernel limits set by the child on itself before it reads the payload:
   ``RLIMIT_CPU`` (SIGXCPU at the limit), ``RLIMIT_AS`` (address space),
   ``RLIMIT_FSIZE`` (output size: a larger result cannot be written), ``RLIMIT_CORE`` = 0,
   ``RLIMIT_NPROC`` = 0 (no new processes, for non-root users); after loading what it needs,
   ``RLIMIT_NOFILE`` = 0, so no file or socket can be opened at all, and, when started as
   root, it drops to the unprivileged ``nobody`` user before any untrusted code runs.
5. A wall-clock timeout in the parent, which kills the child's whole process group.

Results cross back as JSON only (never pickle), read with a size cap.
"""

from __future__ import annotations

# -- the child side: `python -I -S -B sandbox.py LIMITS` runs only this first part ----------
# It comes before the parent's imports so that the sandboxed interpreter loads nothing but
# these few standard-library modules (its start-up is most of a small batch's cost).
import errno
import json
import os
import resource
import sys

#: Exit status of a child whose result hit RLIMIT_FSIZE (Python ignores SIGXFSZ, so the write fails).
EXIT_OUTPUT_TOO_LARGE = 3

#: The only names a program's globals can resolve besides its own definitions.
SAFE_BUILTIN_NAMES = (
    "abs", "all", "any", "bool", "dict", "divmod", "enumerate", "filter", "float", "frozenset",
    "int", "isinstance", "len", "list", "map", "max", "min", "range", "reversed", "round", "set",
    "sorted", "str", "sum", "tuple", "zip",
    "ArithmeticError", "AttributeError", "Exception", "IndexError", "KeyError", "LookupError",
    "TypeError", "ValueError", "ZeroDivisionError",
)


def _child_builtins() -> dict:
    import builtins

    return {name: getattr(builtins, name) for name in SAFE_BUILTIN_NAMES}


def _child_emit(record: dict) -> int:
    data = json.dumps(record).encode("utf-8")
    view = memoryview(data)
    try:
        while view:
            written = os.write(1, view)
            view = view[written:]
    except OSError as error:
        if error.errno == errno.EFBIG:
            return EXIT_OUTPUT_TOO_LARGE
        raise
    return 0


def _child_main() -> int:
    """Set the kernel limits, read the payload, close the doors, then run the program on every
    input; the outcome is one JSON record on fd 1 (layers 2 to 4 of the module docstring)."""
    limits = json.loads(sys.argv[1])
    # Kernel limits first: they bound even the reading of the payload.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_s"], limits["cpu_s"] + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory_bytes"], limits["memory_bytes"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["output_bytes"], limits["output_bytes"]))
    try:
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    except (ValueError, OSError):
        pass
    try:
        payload = json.loads(sys.stdin.buffer.read())
        wrap = None
        if payload["wrap"] is not None:
            import importlib.util

            path, name = payload["wrap"]
            spec = importlib.util.spec_from_file_location("sandbox_api", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            wrap = getattr(module, name).from_data
        code = compile(payload["source"], "<program>", "exec")
    except MemoryError:
        return _child_emit({"ok": False, "kind": "memory", "message": "memory limit exceeded while loading"})
    except SyntaxError as error:
        return _child_emit({"ok": False, "kind": "rejected", "message": f"syntax error: {error.msg}"})
    function_name, inputs = payload["function"], payload["inputs"]
    safe = _child_builtins()
    del payload
    # No more files or sockets from here on, and no privileges.
    sys.stdin.close()
    resource.setrlimit(resource.RLIMIT_NOFILE, (0, 0))
    if os.getuid() == 0:
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
        except OSError:
            pass
    values = bytearray()
    index = -1
    try:
        for index, item in enumerate(inputs):
            env = {"__builtins__": safe, "__name__": "program"}
            exec(code, env)  # module-level code again for every input: no state survives
            function = env.get(function_name)
            if not callable(function):
                return _child_emit({"ok": False, "kind": "bad_output",
                                    "message": f"the program defines no function {function_name}"})
            value = function(wrap(item) if wrap is not None else item)
            if value is True:
                values.append(49)
            elif value is False or value is None:
                values.append(48)
            else:
                kind = type(value).__name__
                return _child_emit({"ok": False, "kind": "bad_output",
                                    "message": f"input {index}: {function_name} returned a {kind}, not a bool"})
    except MemoryError:
        return _child_emit({"ok": False, "kind": "memory", "message": f"input {index}: memory limit exceeded"})
    except BaseException as error:  # noqa: BLE001 - anything the program raises is its failure
        try:
            text = str(error)[:300]
        except BaseException:  # noqa: BLE001
            text = "(unprintable)"
        return _child_emit({"ok": False, "kind": "exception",
                            "message": f"input {index}: {type(error).__name__}: {text}"})
    return _child_emit({"ok": True, "values": values.decode("ascii")})


if __name__ == "__main__":
    sys.exit(_child_main())

# -- the parent side ---------------------------------------------------------------------
import ast  # noqa: E402 - see above: the child stops before these
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from rgvlm.config import Config, param  # noqa: E402

ERROR_KINDS = ("rejected", "timeout", "memory", "exception", "bad_output", "crash")

#: Names that are rejected statically even though they are not in the allow-list anyway:
#: the message is clearer, and a program that mentions them is suspect.
FORBIDDEN_NAMES = frozenset({
    "open", "eval", "exec", "compile", "getattr", "setattr", "delattr", "hasattr", "globals", "locals",
    "vars", "dir", "type", "object", "super", "input", "breakpoint", "help", "exit", "quit", "print",
    "memoryview", "classmethod", "staticmethod", "property", "BaseException", "SystemExit",
})
FORBIDDEN_ATTR_PREFIXES = ("_", "gi_", "f_", "tb_", "cr_", "ag_", "co_", "func_", "im_")
FORBIDDEN_ATTRS = frozenset({"format", "format_map", "mro", "with_traceback"})
FORBIDDEN_NODES = (
    ast.Import, ast.ImportFrom, ast.Global, ast.Nonlocal, ast.ClassDef, ast.AsyncFunctionDef, ast.Await,
    ast.AsyncFor, ast.AsyncWith, ast.Yield, ast.YieldFrom, ast.Match,
)

#: The observation API that :func:`run_checks` wraps every input in, by default.
OBSERVATION_API = (Path(__file__).resolve().parent / "rewards" / "observation_api.py", "Observation")


@dataclass(frozen=True)
class SandboxLimits(Config):
    """Resource limits of one sandbox call (one child process); params: ``vlm_car.sandbox``."""

    SECTION = "vlm_car.sandbox"
    timeout_s: float = param(30.0, low=0.1)  # wall clock, enforced by the parent (kill)
    cpu_s: int = param(20, low=1)  # RLIMIT_CPU of the child
    memory_mb: int = param(512, low=64)  # RLIMIT_AS of the child
    max_output_bytes: int = param(4_000_000, low=1024)  # RLIMIT_FSIZE of the child, and the cap on the result read back
    max_source_chars: int = param(20_000, low=100)


@dataclass
class SandboxResult:
    """The outcome of one program on one batch."""

    ok: bool
    values: list[bool] | None = None  # one per input, when ok
    error_kind: str | None = None  # one of ERROR_KINDS, when not ok
    message: str = ""
    wall_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "error_kind": self.error_kind, "message": self.message, "wall_s": round(self.wall_s, 3)}


# -- layer 1: the static check ---------------------------------------------------------
def _bad_identifier(name: str) -> bool:
    return name.startswith("_") or name in FORBIDDEN_NAMES


def check_source(source: str, function_name: str = "check", max_chars: int = 20_000) -> str | None:
    """Why ``source`` may not run (a one-line reason), or None when it passes the static check."""
    if not isinstance(source, str):
        return f"the program is a {type(source).__name__}, not text"
    if len(source) > max_chars:
        return f"the program has {len(source)} characters, more than the limit of {max_chars}"
    try:
        tree = ast.parse(source, mode="exec")
        compile(tree, "<program>", "exec")
    except SyntaxError as error:
        return f"syntax error on line {error.lineno}: {error.msg}"
    except (ValueError, RecursionError, MemoryError) as error:  # null bytes, absurd nesting
        return f"the program cannot be compiled ({type(error).__name__})"
    for node in ast.walk(tree):
        line = getattr(node, "lineno", "?")
        if isinstance(node, FORBIDDEN_NODES):
            return f"line {line}: {type(node).__name__} statements are not allowed"
        if isinstance(node, ast.Name) and _bad_identifier(node.id):
            return f"line {line}: the name {node.id!r} is not allowed"
        if isinstance(node, ast.Attribute):
            if node.attr.startswith(FORBIDDEN_ATTR_PREFIXES) or node.attr in FORBIDDEN_ATTRS:
                return f"line {line}: the attribute {node.attr!r} is not allowed"
        if isinstance(node, (ast.FunctionDef, ast.Lambda)):
            args = node.args
            names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
            names += [a.arg for a in (args.vararg, args.kwarg) if a is not None]
            if isinstance(node, ast.FunctionDef):
                names.append(node.name)
            bad = [n for n in names if _bad_identifier(n)]
            if bad:
                return f"line {line}: the name {bad[0]!r} is not allowed"
        if isinstance(node, ast.keyword) and node.arg is not None and _bad_identifier(node.arg):
            return f"line {line}: the keyword {node.arg!r} is not allowed"
        if isinstance(node, ast.ExceptHandler) and node.name and _bad_identifier(node.name):
            return f"line {line}: the name {node.name!r} is not allowed"
    if not any(isinstance(n, ast.FunctionDef) and n.name == function_name for n in tree.body):
        return f"the program defines no top-level function {function_name}(obs)"
    return None


def _plain(item: Any) -> Any:
    to_data = getattr(item, "to_data", None)
    return to_data() if callable(to_data) else item


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()


def _read_capped(handle, cap: int) -> bytes:
    handle.seek(0)
    return handle.read(cap + 1)


def run_checks(
    source: str,
    function_name: str,
    observations: list,
    limits: SandboxLimits = SandboxLimits(),
    *,
    wrap: tuple[Path, str] | None = OBSERVATION_API,
    static_check: bool = True,
) -> SandboxResult:
    """Evaluate ``function_name`` of ``source`` on every item of ``observations`` in one
    sandboxed child process; never raises because of the program.

    ``observations`` are plain JSON-able data (or objects with ``to_data()``, e.g.
    :class:`rgvlm.rewards.observation_api.Observation`); the child passes each one through
    ``wrap`` = (path of a standard-library-only module, name of a class with
    ``from_data``) before calling the function, or passes the plain data when ``wrap`` is
    None. ``static_check=False`` skips layer 1; it exists only so that tests can show the
    runtime layers hold on their own.
    """
    started = time.perf_counter()

    def done(ok: bool, values=None, kind=None, message="") -> SandboxResult:
        return SandboxResult(ok, values, kind, message[:500], time.perf_counter() - started)

    if static_check:
        reason = check_source(source, function_name, limits.max_source_chars)
        if reason is not None:
            return done(False, kind="rejected", message=reason)
    items = [_plain(o) for o in observations]
    if not items:
        return done(True, values=[])
    payload = json.dumps({
        "source": source, "function": function_name, "inputs": items,
        "wrap": None if wrap is None else [str(wrap[0]), wrap[1]],
    }).encode("utf-8")
    child_limits = json.dumps({"cpu_s": limits.cpu_s, "memory_bytes": limits.memory_mb * 2**20,
                               "output_bytes": limits.max_output_bytes})
    with tempfile.TemporaryDirectory(prefix="rgvlm-sandbox-") as workdir, \
            tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-B", str(Path(__file__).resolve()), child_limits],
                stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=workdir, env={},
                close_fds=True, start_new_session=True,
            )
        except OSError as error:
            return done(False, kind="crash", message=f"the sandbox process could not start: {error}")
        try:
            proc.communicate(payload, timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return done(False, kind="timeout", message=f"wall-clock limit of {limits.timeout_s} s exceeded")
        rc = proc.returncode
        raw = _read_capped(out, limits.max_output_bytes)
        diagnostics = _read_capped(err, 4000)[-4000:].decode("utf-8", "replace")
    if rc < 0:
        sig = -rc
        if sig == signal.SIGXCPU:
            return done(False, kind="timeout", message=f"CPU-time limit of {limits.cpu_s} s exceeded")
        if sig == signal.SIGXFSZ:
            return done(False, kind="bad_output", message=f"the result exceeds {limits.max_output_bytes} bytes")
        if "MemoryError" in diagnostics:
            return done(False, kind="memory", message=f"memory limit of {limits.memory_mb} MB exceeded")
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return done(False, kind="crash", message=f"the sandbox process died of {name}")
    if len(raw) > limits.max_output_bytes or rc == EXIT_OUTPUT_TOO_LARGE:
        return done(False, kind="bad_output", message=f"the result exceeds {limits.max_output_bytes} bytes")
    try:
        result = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        if "MemoryError" in diagnostics:
            return done(False, kind="memory", message=f"memory limit of {limits.memory_mb} MB exceeded")
        tail = diagnostics.strip().splitlines()[-1:] or ["no output"]
        return done(False, kind="crash", message=f"the sandbox process exited with {rc}: {tail[0]}")
    if not isinstance(result, dict) or not isinstance(result.get("ok"), bool):
        return done(False, kind="crash", message="unreadable result from the sandbox process")
    if not result["ok"]:
        kind = result.get("kind") if result.get("kind") in ERROR_KINDS else "crash"
        return done(False, kind=kind, message=str(result.get("message", "")))
    values = result.get("values")
    if not isinstance(values, str) or len(values) != len(items) or set(values) - {"0", "1"}:
        return done(False, kind="crash", message="unreadable result from the sandbox process")
    return done(True, values=[v == "1" for v in values])
