"""The `vmt` command line: thin Typer commands over the `vmt` package."""
