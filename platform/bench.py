"""`python -m platform.bench`: see swinray.cli.bench_main."""
from swinray.cli import bench_main

if __name__ == "__main__":
    raise SystemExit(bench_main())
