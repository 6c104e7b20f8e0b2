"""A router for tests/system/test_wake.py to include later (service/lazy_routers.py)."""

from fastapi import APIRouter

router = APIRouter(prefix="/deferred")


@router.get("/{item}", name="deferred_item")
def item(item: int) -> dict[str, int]:
    return {"item": item}
