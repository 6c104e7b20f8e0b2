"""`python -m bench.profile --requests N [--ocr-files M]`: see bench/profiling/driver.py."""

from bench.profiling.driver import main

if __name__ == "__main__":
    raise SystemExit(main())
