from clusterous_cli.main import main

main()
