"""OCR of uploaded images and PDFs with Tesseract, under the service's memory budget.

Importing the package caps OpenMP before Tesseract can load: the PyPI wheel is built without
OpenMP, but a system Tesseract built with it would start one thread per core.
"""

import os

os.environ.setdefault("OMP_THREAD_LIMIT", "1")
