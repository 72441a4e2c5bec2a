from binhoard.cli import main

main()
