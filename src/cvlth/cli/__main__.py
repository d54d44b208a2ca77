from cvlth.cli import main

main()
