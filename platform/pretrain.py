"""`python -m platform.pretrain`: see swinray.cli.pretrain_main."""
from swinray.cli import pretrain_main

if __name__ == "__main__":
    raise SystemExit(pretrain_main())
