"""Every shell command in README.md and docs/*.md runs as written after the README's set-up.

The commands of every fenced ``sh`` block are read the way a shell splits them (continued lines,
multi-line quotes, pipes, ``&``, here-documents) and each one is checked against the set-up the
README's first two commands make (``.venv``, the checkout, ``../shared`` beside it when present):
the program it names exists (``.venv/bin/...``, a script of the checkout, a Python module it
runs with ``-m``), every long option it passes is one that program's ``--help`` lists, every
path of the checkout it reads exists, no path belongs to one machine, and no server it starts
takes a port that one started earlier on the page (or in the README, which the reader follows
first) still holds. What needs something the set-up cannot provide (a cluster, Docker, a search
engine on a port) is in ``ELSEWHERE``, each with the reason; its paths are still checked.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
#: Where the README's set-up installs; ``.venv/bin/X`` in a page means this folder's ``X``
#: (CI runs the same set-up into a virtual environment of another name).
VENV_BIN = Path(sys.prefix) / "bin"

#: Programs a page may run that the set-up does not install, and why none is run here.
ELSEWHERE = {
    "docker": "builds the images; needs a Docker daemon",
    "kubectl": "needs a Kubernetes cluster",
    "helm": "needs a cluster (the deploy tests render the chart through helm-python-sdk)",
    "curl": "asks a server or engine a line above started; the bridge tests send these requests",
    "jq": "only formats curl's answer",
    "grpcurl": "a Go binary the reader installs; reflection and the .proto are tested in Python",
    "npm": "Node.js tooling for the cross-language client (scripts/test.sh runs it when present)",
    "node": "runs the Node.js client that tests/node exercises",
    "openssl": "makes the example's certificates; the TLS tests make theirs with cryptography",
}
#: Programs of packages a page installs itself (``.venv/bin/pip install ... PACKAGE``) before
#: running them; the set-up does not install these packages.
PROVIDED_BY = {"opentelemetry-instrument": "opentelemetry-distro"}
#: Shell built-ins and the basic utilities every POSIX system has.
SHELL = {"cd", "echo", "export", "grep", "jobs", "kill", "mkdir", "printf", "sleep", "wait"}
#: Shell words that start or end a compound command; the command after them is checked.
KEYWORDS = {"!", "do", "done", "else", "fi", "if", "then", "until", "while"}
#: What a reader might type out of habit; the set-up installs them into .venv only.
BARE = {"rerankd", "python", "python3", "pip", "pip3", "pytest", "ruff", "mypy"}
SEPARATORS = {"|", "||", "&&", ";", "&", "(", ")", "|&"}
FENCE = re.compile(r"^```(\S*)\s*$")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclass(frozen=True)
class Command:
    """One simple command of a page: its words (quotes removed) and whether it runs in the
    background (``&``)."""

    page: str
    line: int
    words: tuple[str, ...]
    background: bool

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {shlex.join(self.words)}"


def sh_blocks(text: str) -> Iterator[tuple[int, list[str]]]:
    """(number of the first line, lines) of every fenced ``sh`` block."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if FENCE.match(lines[j]))
        if opening.group(1) == "sh":
            yield i + 2, lines[i + 1 : end]
        i = end + 1


def logical_lines(lines: Sequence[str], first: int) -> Iterator[tuple[int, str]]:
    """Lines as the shell reads them: backslash continuations, open quotes and trailing pipes
    join lines; here-document bodies are dropped."""
    pending, start, heredoc = "", first, ""
    for number, line in enumerate(lines, first):
        if heredoc:
            heredoc = "" if line.strip() == heredoc else heredoc
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line + "\n"
        if pending.rstrip().endswith(("|", "&&", "||")):
            continue
        try:
            shlex.split(pending, comments=True)
        except ValueError:  # a quote is still open: the command goes on
            continue
        marker = re.search(r"<<-?\s*['\"]?(\w+)", pending)
        heredoc = marker.group(1) if marker else ""
        yield start, pending
        pending = ""
    assert not pending.strip(), f"line {start}: unterminated command {pending!r}"


def commands(page: Path) -> list[Command]:
    """Every simple command in the page's ``sh`` blocks, in order."""
    return parse(page.read_text(encoding="utf-8"), page.relative_to(ROOT).as_posix())


def parse(text: str, name: str) -> list[Command]:
    """Every simple command in the ``sh`` blocks of Markdown ``text``, in order."""
    found: list[Command] = []
    for first, lines in sh_blocks(text):
        for number, line in logical_lines(lines, first):
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            lexer.commenters = "#"
            words: list[str] = []
            skip_next = False
            for token in lexer:
                if skip_next:
                    skip_next = False
                elif token in SEPARATORS:
                    if words:
                        found.append(Command(name, number, tuple(words), token == "&"))
                    words = []
                elif token[0] in "<>":
                    skip_next = True  # a redirection (>, >>, <, <<, >&) and its target
                else:
                    words.append(token)
            if words:
                found.append(Command(name, number, tuple(words), False))
    return found


@functools.cache
def help_text(*argv: str) -> str:
    """What ``argv --help`` prints (run from the checkout)."""
    result = subprocess.run(
        [*argv, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    return result.stdout + result.stderr


def module_exists(name: str) -> bool:
    """Whether ``python -m name`` finds the module, run from the checkout (whose folders, such
    as ``bench``, are importable there)."""
    top = ROOT / name.replace(".", "/")
    if top.with_suffix(".py").is_file() or (top / "__init__.py").is_file():
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def option_problems(command: Command, argv: tuple[str, ...], args: Sequence[str]) -> list[str]:
    """Long options in ``args`` that ``argv --help`` does not list."""
    listed = help_text(*argv)
    unknown = [
        arg.split("=")[0]
        for arg in args
        if arg.startswith("--")
        and arg != "--"
        and not re.search(rf"(?<![\w-]){re.escape(arg.split('=')[0])}(?![\w-])", listed)
    ]
    return [f"{command}: {shlex.join(argv)} has no option {u}" for u in unknown]


def path_problems(command: Command, words: Sequence[str]) -> list[str]:
    """Paths that belong to one machine, and paths of the checkout that do not exist."""
    problems = []
    for word in words:
        named = ASSIGNMENT.match(word) or word.startswith("--")
        value = word.partition("=")[2] if named else word
        if not value or value.startswith(("-", "/tmp/", "/dev/", ".venv/")):
            continue  # options, scratch files, and the programs the set-up installed
        if re.fullmatch(r"[/~][\w.@+-]*(/[\w.@+-]*)*", value):
            problems.append(
                f"{command}: {value} is a path of one machine; use a path relative to the "
                "checkout (../shared/... for the shared data) or one under /tmp"
            )
        elif value.startswith("../shared/"):
            if SHARED.is_dir() and not (ROOT / value).exists():
                problems.append(f"{command}: {value} does not exist")
        elif re.fullmatch(r"[\w.-]+(/[\w.@-]+)*/?", value) and "/" in value:
            first = value.split("/")[0]
            if (ROOT / first).exists() and not (ROOT / value).exists():
                problems.append(f"{command}: {value} is not in the checkout")
    return problems


def python_problems(command: Command, python: str, args: Sequence[str]) -> list[str]:
    """A ``.venv/bin/python`` command: its module (``-m``), script or ``-c`` imports."""
    if not args:
        return []
    if args[0] == "-m":
        module, rest = args[1], args[2:]
        if not module_exists(module):
            return [f"{command}: no module {module} after the set-up"]
        sub = rest[:1] if rest and re.fullmatch(r"[a-z][a-z-]*", rest[0]) else ()
        return option_problems(command, (python, "-m", module, *sub), rest)
    if args[0] == "-c":
        imported = re.findall(r"^\s*(?:from|import)\s+(\w+)", args[1], re.MULTILINE)
        return [f"{command}: no module {m}" for m in imported if not module_exists(m)]
    script = ROOT / args[0]
    if not script.is_file():
        return [f"{command}: {args[0]} is not a script of the checkout"]
    options = [a for a in args[1:] if a.startswith("--")]
    return option_problems(command, (python, args[0]), options) if options else []


def program_problems(command: Command, made: set[str]) -> list[str]:
    """Whether the program exists after the set-up and takes the options it is given.

    ``made`` collects what earlier commands of the page made: virtual environments
    (``python3 -m venv DIR``) and packages ``.venv/bin/pip install`` added."""
    words = list(command.words)
    while words and (ASSIGNMENT.match(words[0]) or words[0] in KEYWORDS):
        words.pop(0)
    if not words:
        return []
    program, args = words[0], words[1:]
    problems = path_problems(command, command.words)
    if program.startswith(".venv/bin/"):
        name = program.removeprefix(".venv/bin/")
        exe = VENV_BIN / name
        if name in ("pip", "pip3") and args[:1] == ["install"]:
            made.update(a for a in args[1:] if not a.startswith("-"))
        if name in PROVIDED_BY and PROVIDED_BY[name] in made:
            return problems + program_problems(
                Command(command.page, command.line, tuple(args), command.background), made
            )
        if not exe.exists():
            return [*problems, f"{command}: {program} is not installed by the set-up"]
        if name in ("python", "python3"):
            return problems + python_problems(command, str(exe), args)
        if name == "rerankd" and args:
            return problems + option_problems(command, (str(exe), args[0]), args[1:])
        return problems
    if any(program.startswith(f"{venv}/bin/") for venv in made):
        return problems  # a virtual environment the same block made with python3 -m venv
    if program in ("bash", "sh"):
        if not args or not (ROOT / args[0]).is_file():
            return [*problems, f"{command}: {args[:1]} is not a script of the checkout"]
        return problems
    if program == "python3" and args[:2] == ["-m", "venv"]:
        made.add(args[2])
        return problems
    if program in BARE:
        return [
            *problems,
            f"{command}: a bare {program}; the README installs into .venv, so write "
            f".venv/bin/{program}",
        ]
    if program in ELSEWHERE or program in SHELL:
        return problems
    return [*problems, f"{command}: {program} is neither installed by the set-up nor allowed"]


def ports(words: Sequence[str]) -> dict[int, str]:
    """Ports a command listens on, with the option naming each: ``--port N``, ``--*-port=N``,
    ``--listen HOST:PORT``."""
    found = {}
    for i, word in enumerate(words):
        option, _, value = word.partition("=")
        if not value and i + 1 < len(words):
            value = words[i + 1]
        port = value.rpartition(":")[2] if option == "--listen" else value
        if (option == "--listen" or option.endswith("-port")) and port.isdigit():
            found[int(port)] = option
    return found


def port_problems(sequence: Sequence[Command]) -> list[str]:
    """Servers started while an earlier background one still holds their port, and metrics on
    9090 (Prometheus's own). ``kill $!`` stops the last background command; any other ``kill``
    stops them all."""
    problems, held, last = [], dict[int, Command](), list[int]()
    for command in sequence:
        if command.words[0] == "kill":
            for port in last if command.words[1:] == ("$!",) else list(held):
                held.pop(port, None)
            continue
        used = ports(command.words)
        if used.get(9090) == "--metrics-port":
            problems.append(f"{command}: 9090 is Prometheus's own port; use another or none")
        for port in used:
            if port in held:
                problems.append(f"{command}: port {port} is still held by {held[port]}")
        if command.background:
            held.update(dict.fromkeys(used, command))
            last = list(used)
    return problems


def page_problems(page: Path) -> list[str]:
    """Everything wrong with the commands of one page (after the README's, for ports)."""
    made: set[str] = set()
    found = commands(page)
    problems = [p for c in found for p in program_problems(c, made)]
    earlier = commands(README) if page != README else []
    return problems + [p for p in port_problems([*earlier, *found]) if not p.startswith("README")]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_command_of_the_page_runs_after_the_set_up(page: Path) -> None:
    assert page_problems(page) == []


def test_the_pages_hold_commands() -> None:
    """The reader is given commands where the pages have sh blocks (the parser found them)."""
    counts = {page.name: len(commands(page)) for page in PAGES}
    assert counts["README.md"] >= 10, counts
    assert all(counts[page.name] for page in PAGES if "```sh" in page.read_text()), counts


def block_problems(text: str) -> list[str]:
    """The problems of a page holding ``text`` as its one sh block."""
    made: set[str] = set()
    found = parse(f"# A page\n\n```sh\n{text}\n```\n", "page.md")
    return [p for c in found for p in program_problems(c, made)] + port_problems(found)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("rerankd serve --model /tmp/m", "a bare rerankd"),
        ("pip install 'rerankd[bridge]'", "a bare pip"),
        (".venv/bin/rerankd serve --model /work/shared/models/m", "a path of one machine"),
        (".venv/bin/rerankd serve --model /tmp/m --no-such-option", "has no option --no-such"),
        (".venv/bin/python -m no_such_module", "no module no_such_module"),
        (".venv/bin/python scripts/no_such_script.py", "not a script of the checkout"),
        ("bash scripts/no_such_script.sh", "not a script of the checkout"),
        (".venv/bin/python -m pytest tests/no_such_folder", "not in the checkout"),
        (".venv/bin/no-such-program", "not installed by the set-up"),
        (".venv/bin/rerankd serve --model /tmp/m --metrics-port 9090 &", "Prometheus's own"),
        ("a-program-nobody-has --help", "neither installed by the set-up nor allowed"),
        (
            ".venv/bin/rerankd serve --model /tmp/m --port 50090 &\n"
            ".venv/bin/rerankd serve --model /tmp/n \\\n    --port 50090",
            "port 50090 is still held",
        ),
    ],
)
def test_the_check_finds_what_a_reader_would_trip_on(text: str, says: str) -> None:
    problems = block_problems(text)
    assert any(says in p for p in problems), problems


def test_commands_that_are_right_pass() -> None:
    """Stopped servers free their ports; venvs a block makes provide its programs; pipes,
    here-documents and environment assignments are read as a shell reads them."""
    text = (
        ".venv/bin/rerankd serve --model ../shared/models/manpages-minilm-l6-ce --port 50090 &\n"
        "kill $!\n"
        "RERANKD_WARMUP=0 .venv/bin/rerankd serve --model /tmp/m --port 50090 &\n"
        "python3 -m venv /tmp/other-venv\n"
        "/tmp/other-venv/bin/pip install 'x==1'\n"
        "printf '%s\\n' 'a | b' |\n"
        "    .venv/bin/rerankd rerank --target localhost:50090 --query q\n"
        "curl -s localhost:9200/_bulk --data-binary @- <<'EOF'\n"
        '{"not": "a command"}\n'
        "EOF\n"
    )
    found = parse(f"```sh\n{text}\n```\n", "page.md")
    assert [c.words[0] for c in found] == [
        ".venv/bin/rerankd",
        "kill",
        "RERANKD_WARMUP=0",
        "python3",
        "/tmp/other-venv/bin/pip",
        "printf",
        ".venv/bin/rerankd",
        "curl",
    ]
    assert block_problems(text) == []
