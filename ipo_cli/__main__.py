from ipo_cli.cli import main

main()
