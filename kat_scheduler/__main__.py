from kat_scheduler.cli import main

main()
