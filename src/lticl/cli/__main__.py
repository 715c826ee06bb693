from lticl.cli import main

main()
