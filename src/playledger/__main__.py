from playledger.cli import main

main()
