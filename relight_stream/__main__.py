from relight_stream.cli import main

main()
