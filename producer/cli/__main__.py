"""`python -m vlmbatch.producer.cli`: the `vlmbatch` command without its console script."""

from vlmbatch.producer.cli import main

main()
