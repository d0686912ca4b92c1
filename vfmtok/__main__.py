from vfmtok.cli.main import main

main()
