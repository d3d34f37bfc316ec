"""`python -m platform.finetune`: see swinray.cli.finetune_main."""
from swinray.cli import finetune_main

if __name__ == "__main__":
    raise SystemExit(finetune_main())
