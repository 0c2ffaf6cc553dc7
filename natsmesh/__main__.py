from natsmesh.cli._main import main

main()
