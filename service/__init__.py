"""pysentimiento sentiment analysis inside 512 MB.

Importing the package pins thread pools and the allocator before any numeric library can load.
"""

from service import runtime

runtime.pin()
