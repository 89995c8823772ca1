from ipo_cli.entry import main

main()
