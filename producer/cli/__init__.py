"""The `vlmbatch` command line: one console script, one module per command group."""

from __future__ import annotations

import sys

import click

from vlmbatch.schema.contracts.errors import VlmbatchError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="vlmbatch", prog_name="vlmbatch", message="%(prog)s %(version)s")
def cli() -> None:
    """vlmbatch: push image+question jobs through a vision-language reasoning model, with a SQL ledger
    that never loses or duplicates a result."""


def main() -> None:
    from pydantic import ValidationError
    from pydantic_settings import SettingsError
    from sqlalchemy.exc import ArgumentError, InterfaceError, NoSuchModuleError, OperationalError

    from vlmbatch.producer.cli import db, demo, ops, outputs, runs, serve, steer, submit, work  # noqa: F401  (registers the commands)

    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        # One line: the usage text is one `--help` away.
        _fail(exc.format_message(), exc.exit_code)
    except VlmbatchError as exc:
        _fail(exc.message, whole=True)
    except ValidationError as exc:  # a VLMBATCH_* setting of the wrong shape
        first = exc.errors()[0]
        _fail(f"invalid setting {'.'.join(str(p) for p in first['loc'])}: {first['msg']}")
    except (ArgumentError, NoSuchModuleError) as exc:
        _fail(f"the database URL is not valid: {exc}")
    except (OperationalError, InterfaceError) as exc:
        _fail(f"cannot use the database: {exc.orig or exc}")
    except SettingsError as exc:  # a VLMBATCH_* setting that does not even parse (JSON ones)
        _fail(f"invalid setting: {exc}" + (f" ({exc.__cause__})" if exc.__cause__ else ""))
    except RecursionError:
        _fail("the input nests too deeply to read")
    except OSError as exc:  # a path that cannot be written or read, a port in use
        where = f"{exc.filename}: " if exc.filename else ""
        _fail(f"{where}{exc.strerror or exc}")


def _fail(message: str, status: int = 2, *, whole: bool = False) -> None:
    """`message` on stderr, printable characters only, then exit. Only its first line unless `whole`:
    our own errors may list what they refuse (a manifest's malformed rows), a library's add noise."""
    from vlmbatch.producer.cli.render import terminal_safe

    lines = str(message).strip().splitlines() or ["failed"]
    shown = lines if whole else lines[:1]
    click.echo("error: " + "\n".join(terminal_safe(line) for line in shown), err=True)
    sys.exit(status)
