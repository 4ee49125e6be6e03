"""What every entry module (`python -m fer_hf.X`) shares: its parser, its logging, and how it stops on bad input.

Errors for bad input are raised where the input is read, with a message that names it; an entry module turns those
into `fer_hf.X: message` and exit status 1 instead of a traceback.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The errors bad input raises (a missing folder, a malformed file, a wrong value); anything else is a bug and keeps
# its traceback.
INPUT_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError)


def hf_argument_parser() -> type:
    """transformers' `HfArgumentParser`. Where transformers is not imported yet, its `hf_argparser.py` (standard
    library and yaml only) is loaded on its own: transformers' package `__init__` takes half a second to set up its
    lazy modules, which `python -m fer_hf.predict --help` and an ONNX Runtime run never use otherwise."""
    if "fer_hf._hf_argparser" in sys.modules:
        return sys.modules["fer_hf._hf_argparser"].HfArgumentParser
    if "transformers" not in sys.modules:
        spec = importlib.util.find_spec("transformers")
        source = Path(spec.origin).with_name("hf_argparser.py") if spec and spec.origin else None
        if source is not None and source.is_file():
            module_spec = importlib.util.spec_from_file_location("fer_hf._hf_argparser", source)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_spec.name] = module
            try:
                module_spec.loader.exec_module(module)
                return module.HfArgumentParser
            except Exception:  # a transformers version whose parser needs the package: import it whole
                del sys.modules[module_spec.name]
    from transformers import HfArgumentParser

    return HfArgumentParser


# The words HfArgumentParser's string_to_bool reads as a bool.
BOOL_WORDS = frozenset({"yes", "true", "t", "y", "1", "no", "false", "f", "n", "0"})


def make_parser(prog: str, doc: str | None, *dataclass_types: type):
    """An HfArgumentParser named `python -m PROG`, described by the first paragraph of the module docstring."""
    parser = hf_argument_parser()(dataclass_types, prog=f"python -m {prog}", description=(doc or "").split("\n\n")[0])
    for action in _bool_options(parser):
        action.metavar = "true|false"  # the help showed `--json [JSON]`, which reads as taking a file name
    return parser


def _bool_options(parser) -> list:
    # HfArgumentParser's bool fields: `--flag` alone is true, `--flag false` false (nargs "?", const True).
    return [action for action in parser._actions if action.option_strings and action.nargs == "?"
            and action.const is True]


def _flags_before_inputs(parser, argv: list[str]) -> list[str]:
    """`--json photo.jpg` as `--json=true photo.jpg` for a parser that takes inputs: a bool flag takes an optional
    value, so argparse would read the first input as that value and fail on it."""
    flags = {option for action in _bool_options(parser) for option in action.option_strings}
    return [f"{token}=true" if token in flags and i + 1 < len(argv) and not argv[i + 1].startswith("-")
            and argv[i + 1].lower() not in BOOL_WORDS else token for i, token in enumerate(argv)]


def parse(parser, argv: list[str] | None) -> tuple[Any, ...]:
    """Parse argv into the parser's dataclasses (plus a namespace for extra positional arguments, if any); a value
    rejected by a dataclass's `__post_init__` becomes a usage error (exit status 2), not a traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(not action.option_strings for action in parser._actions):  # positional inputs: see _flags_before_inputs
        argv = _flags_before_inputs(parser, argv)
    try:
        return tuple(parser.parse_args_into_dataclasses(args=argv))
    except ValueError as err:
        message = str(err)
        before_dashes = argv[:argv.index("--")] if "--" in argv else argv
        unknown = [token for token in before_dashes if token.startswith("-") and not _is_number(token)
                   and token.split("=", 1)[0] not in parser._option_string_actions]
        if "not used by the HfArgumentParser" in message and unknown:
            # HfArgumentParser's own words name no cause: an option misspelt, or a file named like one.
            message = (f"unknown option(s): {' '.join(unknown)} (see --help). A file whose name starts with '-' "
                       f"goes after `--` or as ./{unknown[0]}.")
        parser.error(message)


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def setup_logging(level: int = logging.WARNING, fer_hf_level: int = logging.INFO) -> None:
    """Libraries at `level`; fer_hf's own progress at `fer_hf_level`."""
    logging.basicConfig(format=LOG_FORMAT, level=level)
    logging.getLogger("fer_hf").setLevel(fer_hf_level)


@contextlib.contextmanager
def exit_on_bad_input(
    prog: str, errors: tuple[type[BaseException], ...] = INPUT_ERRORS, status: int = 1
) -> Iterator[None]:
    """Turn the errors bad input raises into `prog: message` on stderr and exit status `status`."""
    try:
        yield
    except errors as err:
        logging.getLogger(__name__).debug("%s failed", prog, exc_info=True)
        print(f"{prog}: {err}", file=sys.stderr)
        raise SystemExit(status) from err


def exit_now(status: int | None = 0) -> NoReturn:
    """`sys.exit(status)` for an entry module run as a program, without the garbage collection of every live object
    that the interpreter runs as it shuts down. With torch and transformers imported that pass takes most of a second
    and frees nothing the exit does not (`predict --backend pytorch` on a folder of crops: `benchmarks/RESULTS.md`).
    Not for `main()` itself: a notebook or test that calls it goes on living, and frozen objects are never freed."""
    gc.freeze()
    sys.exit(status)
