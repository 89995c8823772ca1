"""The `ipo` command line: `app.py` assembles one module per command (or command group);
`options.py` declares the shared options and the --help panels, `output.py` renders results
(tables or --json) and writes --out files, `errors.py` maps errors to one line and an exit
code, `help.py` prints --help, `docs.py` writes docs/cli.md from it."""
