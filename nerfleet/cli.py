"""The one command line: nerfleet corpus | models | score | run | worker | status | report | export | aggregate |
demo | monitor | finetune | training | tag."""

from __future__ import annotations

import typer

from nerfleet.commands import corpus, fleet, local, models, score, training

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, pretty_exceptions_enable=False)
for name, command in (
    ("score", score.score),
    ("run", fleet.run),
    ("worker", fleet.worker),
    ("status", fleet.status),
    ("report", fleet.report),
    ("export", fleet.export),
    ("aggregate", fleet.aggregate),
    ("demo", local.demo),
    ("monitor", local.monitor),
    ("finetune", training.finetune),
    ("training", training.training),
    ("tag", training.tag),
):
    app.command(name)(command)
app.add_typer(corpus.app, name="corpus")
app.add_typer(models.app, name="models")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
