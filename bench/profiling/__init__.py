"""`python -m bench.profile`: a real server under a mixed load, traced, and a Markdown report of it."""
