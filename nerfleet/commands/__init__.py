"""The CLI's commands, one module per group; `nerfleet.cli` puts them on one Typer app."""
