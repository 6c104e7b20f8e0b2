"""Operations visibility: Prometheus metrics, the memory dashboard, and the memory profiler."""
