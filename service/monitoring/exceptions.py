"""Errors of the monitoring routes."""

from service.exceptions import ServiceError


class HistoryUnavailable(ServiceError):
    """The app runs without its lifespan (uvicorn --lifespan off), which starts the history."""

    status_code = 503
    code = "history_unavailable"
