"""Command-line plumbing shared by the entry points: flag parsing and one-line errors."""

from __future__ import annotations

import re
import sys
from typing import NoReturn

from absl import flags


def fail(prog: str, message: str) -> NoReturn:
    """Prints `prog: error: message` on stderr and exits with status 2."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(2)


def make_flags_parser(prog: str):
    """Returns an `app.run` flags parser that turns bad flags into one-line errors.

    A misspelt `--config.<field>` makes ml_collections raise deep inside absl with a long
    traceback; users get the field name and the suggestion instead.
    """

    def parse(argv: list[str]) -> list[str]:
        try:
            return flags.FLAGS(argv)
        except (AttributeError, KeyError) as e:
            text = str(e).replace("\\n", "\n").replace("\\'", "'")
            name = re.search(r"'([^'\n]+)'", text)
            hint = re.search(r'Did you mean "([^"]+)"', text)
            fail(
                prog,
                f"unknown config field {name.group(1) if name else text!r}"
                + (f" (did you mean {hint.group(1)!r}?)" if hint else "")
                + "; see the config file for the fields it defines",
            )
        except flags.Error as e:
            fail(prog, str(e))

    return parse
