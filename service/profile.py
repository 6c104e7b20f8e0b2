"""`python -m service.profile --requests N [--ocr-files M]`: see service/monitoring/profiling/driver.py."""

from service.monitoring.profiling.driver import main

if __name__ == "__main__":
    raise SystemExit(main())
