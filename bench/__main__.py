"""`python -m bench`: the side-by-side server benchmark (bench/serving.py)."""

from bench.serving import main

if __name__ == "__main__":
    main()
