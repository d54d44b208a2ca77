"""The typer application every command module registers itself on."""

import typer

app = typer.Typer(
    name="cvlth",
    help="Lottery tickets in pre-trained vision models: find masks, transfer them, analyse them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
