from natsmesh._cli import main

main()
