"""Sweeps: job names built from parameters, and parameters read back from job names.

Theory of operation
-------------------
A sweep's job is named by its parameters, ``key=value`` words joined by single
spaces in a fixed order: ``lr=0.1 seed=0``.  The name is the whole record of
what the job runs, so it stays readable in ``jobs.txt``, the ledgers and
``distribute status``, and :func:`parse_job` turns it back into a mapping
without any other state.  For that to hold, a key is a word of letters,
digits, ``_``, ``.`` and ``-`` that starts with a letter or ``_``, and a
value is any non-empty text without white space or the characters a job name
cannot hold (see :func:`distribute.core.names.check_name`).  Both are checked
before any name is returned, so a bad value is refused with an error naming
it, never queued half-way.

Values are kept exactly as written: ``0.10`` stays ``0.10`` and ``1e-3``
stays ``1e-3``; the job's command gets the same text.  :func:`grid` takes the
cartesian product of value lists, the first parameter varying slowest, and
:func:`random_search` draws points of a search space from a seeded random
generator, so the same seed gives the same jobs on any machine.
"""

from __future__ import annotations

import itertools
import math
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from distribute.core.errors import InvalidName, UsageError
from distribute.core.names import check_name

#: A parameter's name: a word that can also name a ``{placeholder}`` of a command.
KEY_PATTERN = r"[A-Za-z_][A-Za-z0-9_.\-]*"
_KEY = re.compile(KEY_PATTERN)
_WORD = re.compile(rf"({KEY_PATTERN})=(.+)", re.DOTALL)
_INT = re.compile(r"[+-]?\d+")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
#: Significant digits of a drawn float: enough to tell points apart, short enough to read.
FLOAT_DIGITS = 4

Value = str | int | float
Values = Value | Iterable[Value]


# ---- names ---------------------------------------------------------------------------------
def check_key(key: str) -> str:
    """Return ``key`` if it can name a parameter.

    Raises:
        InvalidName: naming the key and the rule.
    """
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise InvalidName(
            f"parameter name {key!r} is not allowed: use letters, digits, '_', '.' and '-', "
            "starting with a letter or '_'",
            name=key,
        )
    return key


def check_value(key: str, value: str) -> str:
    """Return ``value`` if a job name can hold it as the value of ``key``.

    Raises:
        InvalidName: the value is empty or holds white space or a character no job name
            can hold (a tab, a newline, another control character).
    """
    if value == "":
        raise InvalidName(f"parameter {key} has an empty value", name=value)
    bad = next((ch for ch in value if ch.isspace()), None)
    if bad is not None:
        raise InvalidName(
            f"value {value!r} of parameter {key} contains white space ({bad!r}); job names "
            "separate parameters with spaces, so a value cannot hold one",
            name=value,
        )
    try:
        check_name(value, "job")
    except InvalidName as exc:
        raise InvalidName(
            f"value {value!r} of parameter {key} cannot be part of a job name: {exc}", name=value
        ) from None
    return value


def format_job(params: Mapping[str, Value]) -> str:
    """The job name for ``params``: ``key=value`` words joined by spaces, in their order.

    Raises:
        InvalidName: a key or a value a job name cannot hold.
        UsageError: no parameters.
    """
    if not params:
        raise UsageError("a job needs at least one parameter")
    words = []
    for key, value in params.items():
        text = _text(value)
        words.append(f"{check_key(key)}={check_value(key, text)}")
    return check_name(" ".join(words), "job")


def parse_job(name: str) -> dict[str, str]:
    """The parameters of a job name: its ``key=value`` words (the inverse of :func:`format_job`).

    Words that are not of that form are skipped, so ``"mlp lr=0.1"`` gives
    ``{"lr": "0.1"}`` and a name without any such word gives ``{}``.  A key
    given twice keeps its first value.
    """
    params: dict[str, str] = {}
    for word in name.split(" "):
        match = _WORD.fullmatch(word)
        if match is not None:
            params.setdefault(match.group(1), match.group(2))
    return params


def _text(value: object) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


# ---- grids ---------------------------------------------------------------------------------
def parse_values(spec: str) -> list[str]:
    """Values from their command-line form: ``0.1,0.01`` lists them, ``0..3`` is the integers
    0 to 3 (inclusive; ``3..0`` counts down), and the two mix: ``0..2,10``.

    Every listed value is kept as written.  Duplicates are dropped (the first stays).

    Raises:
        UsageError: an empty item, or a range whose ends are not integers.
    """
    values: list[str] = []
    for item in spec.split(","):
        if item == "":
            raise UsageError(f"{spec!r} has an empty value (two commas, or one at an end)")
        start, sep, stop = item.partition("..")
        if sep and (_NUMBER.fullmatch(start) or _NUMBER.fullmatch(stop)):
            if not (_INT.fullmatch(start) and _INT.fullmatch(stop)):
                raise UsageError(
                    f"{item!r}: a range A..B takes integers; list other values with commas"
                )
            a, b = int(start), int(stop)
            step = 1 if b >= a else -1
            values.extend(str(i) for i in range(a, b + step, step))
        else:
            values.append(item)
    return list(dict.fromkeys(values))


def _values_of(key: str, given: Values) -> list[str]:
    if isinstance(given, str):
        values = parse_values(given)
    elif isinstance(given, int | float):
        values = [_text(given)]
    else:
        values = list(dict.fromkeys(_text(v) for v in given))
    if not values:
        raise UsageError(f"parameter {key} has no values")
    return [check_value(key, v) for v in values]


def grid(space: Mapping[str, Values] | None = None, /, **params: Values) -> list[str]:
    """Job names for every combination of the values: the cartesian product.

    The first parameter varies slowest: ``grid(lr="0.1,0.01", seed="0..1")`` is
    ``["lr=0.1 seed=0", "lr=0.1 seed=1", "lr=0.01 seed=0", "lr=0.01 seed=1"]``.

    Args:
        space: parameters as a mapping, for names that are not Python identifiers
            (``{"warmup-steps": [0, 100]}``); they come before ``params``.
        params: each parameter's values: a string in command-line form
            (:func:`parse_values`), one number, or an iterable of values
            (``range(3)``, ``[1e-3, 1e-4]``; strings in it are taken literally).

    Raises:
        InvalidName: a name or value that a job name cannot hold.
        UsageError: no parameters, a parameter given twice, or no values.
    """
    merged: dict[str, Values] = {}
    for source in (space or {}, params):
        for key, given in source.items():
            if key in merged:
                raise UsageError(f"parameter {key} is given twice")
            merged[check_key(key)] = given
    if not merged:
        raise UsageError("a grid needs at least one parameter")
    axes = [[(key, v) for v in _values_of(key, given)] for key, given in merged.items()]
    return [format_job(dict(point)) for point in itertools.product(*axes)]


def cross(*sweeps: Sequence[str]) -> list[str]:
    """Every combination of jobs from several sweeps, their names joined by a space (the
    first sweep varies slowest): ``cross(random_search(...), grid(seed="0..2"))`` runs
    each drawn point with three seeds.

    Raises:
        UsageError: two sweeps share a parameter.
    """
    if not sweeps:
        return []
    seen: dict[str, int] = {}
    for i, jobs in enumerate(sweeps):
        for key in {k for job in jobs for k in parse_job(job)}:
            if seen.setdefault(key, i) != i:
                raise UsageError(f"parameter {key} is in two of the sweeps combined")
    return [check_name(" ".join(parts), "job") for parts in itertools.product(*sweeps)]


# ---- random search -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Dimension:
    """One parameter of a random search: how its values are drawn.

    ``kind`` is ``uniform``, ``loguniform``, ``int`` (integers, both ends included)
    or ``choice`` (one of ``choices``, each as likely).
    """

    key: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    choices: tuple[str, ...] = ()

    def draw(self, rng: random.Random) -> str:
        if self.kind == "choice":
            return self.choices[rng.randrange(len(self.choices))]
        if self.kind == "int":
            return str(rng.randint(int(self.low), int(self.high)))
        if self.kind == "loguniform":
            x = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            x = rng.uniform(self.low, self.high)
        return f"{x:.{FLOAT_DIGITS}g}"

    @property
    def size(self) -> int | None:
        """How many distinct values it can give (``None``: for all purposes unbounded)."""
        if self.kind == "choice":
            return len(self.choices)
        if self.kind == "int":
            return int(self.high) - int(self.low) + 1
        return None


_KINDS = ("uniform", "loguniform", "int", "choice")


def parse_dimension(key: str, spec: str | Sequence[Value]) -> Dimension:
    """A :class:`Dimension` from its text form or, from Python, a list of choices.

    Text forms: ``uniform:LOW:HIGH``, ``loguniform:LOW:HIGH`` (0 < LOW),
    ``int:LOW:HIGH`` (both included), ``choice:A,B,C``; a spec without one of
    these kinds is a list of values in :func:`parse_values` form (``0..4``,
    ``adam,sgd``), drawn as a choice.

    Raises:
        UsageError: a malformed spec, naming the parameter.
        InvalidName: a choice that a job name cannot hold.
    """
    check_key(key)
    if not isinstance(spec, str):
        choices = tuple(dict.fromkeys(_text(v) for v in spec))
        if not choices:
            raise UsageError(f"parameter {key} has no choices")
        return Dimension(key, "choice", choices=tuple(check_value(key, c) for c in choices))
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in _KINDS:
        return parse_dimension(key, parse_values(spec))
    if kind == "choice":
        return parse_dimension(key, parse_values(rest))
    low_text, sep, high_text = rest.partition(":")
    form = f"{kind}:LOW:HIGH"
    if not sep:
        raise UsageError(f"parameter {key}: {spec!r} should read {form}")
    try:
        low, high = float(low_text), float(high_text)
    except ValueError:
        raise UsageError(f"parameter {key}: {spec!r} should read {form} with numbers") from None
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise UsageError(f"parameter {key}: {spec!r} needs LOW < HIGH")
    if kind == "loguniform" and low <= 0:
        raise UsageError(f"parameter {key}: {spec!r}: loguniform needs 0 < LOW")
    if kind == "int" and not (_INT.fullmatch(low_text) and _INT.fullmatch(high_text)):
        raise UsageError(f"parameter {key}: {spec!r}: int takes integer ends")
    return Dimension(key, kind, low, high)


def random_search(
    n: int, space: Mapping[str, str | Sequence[Value]], seed: int | None = None
) -> list[str]:
    """``n`` distinct job names drawn at random from ``space``.

    The same ``seed`` gives the same names, in the same order, on any machine.
    Floats are written with :data:`FLOAT_DIGITS` significant digits (the job runs
    exactly the value its name shows).  A point drawn twice is drawn again.

    Args:
        n: how many jobs.
        space: parameter -> spec (see :func:`parse_dimension`), in name order.
        seed: the random generator's seed (``None``: a fresh one).

    Raises:
        UsageError: ``n`` < 1, an empty space, a malformed spec, or a space with
            fewer than ``n`` distinct points.
    """
    if n < 1:
        raise UsageError(f"a random search needs n >= 1, got {n}")
    if not space:
        raise UsageError("a random search needs at least one parameter")
    dims = [parse_dimension(key, spec) for key, spec in space.items()]
    sizes = [d.size for d in dims]
    if all(s is not None for s in sizes):
        total = math.prod(s for s in sizes if s is not None)
        if total < n:
            raise UsageError(
                f"the search space has only {total} distinct points, fewer than the {n} "
                "jobs asked for: use --grid to run them all"
            )
    rng = random.Random(seed)
    names: dict[str, None] = {}
    tries = 0
    while len(names) < n:
        tries += 1
        if tries > 100 * n + 1000:
            raise UsageError(
                f"drew only {len(names)} distinct points of the {n} asked for: the space "
                f"is too small at {FLOAT_DIGITS} significant digits"
            )
        names.setdefault(format_job({d.key: d.draw(rng) for d in dims}), None)
    return list(names)


__all__ = [
    "FLOAT_DIGITS",
    "KEY_PATTERN",
    "Dimension",
    "check_key",
    "check_value",
    "cross",
    "format_job",
    "grid",
    "parse_dimension",
    "parse_job",
    "parse_values",
    "random_search",
]
