from tune.cli import main

main()
