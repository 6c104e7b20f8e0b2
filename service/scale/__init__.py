"""Beyond one machine: bulk scoring on Ray Data and serving on Ray Serve (`python -m service.scale`).

An optional extra (requirements-ray.txt, `bash start.sh install ray`): the 512 MB server never
imports this package. Both paths reuse the service as it is: the same readers, preprocessing,
onnx analyzer and registry in every Ray actor, and the same FastAPI app in every Serve replica.
"""
