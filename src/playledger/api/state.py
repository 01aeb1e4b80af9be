"""What every handler reaches through `request.app.state`: one typed object, set by the app."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.requests import Request

from playledger.api.settings import ApiSettings
from playledger.store.base import Store

if TYPE_CHECKING:
    from playledger.api.ingest import Gate
    from playledger.api.metrics import Metrics
    from playledger.api.writer import Writer


@dataclass
class AppState:
    store: Store
    settings: ApiSettings
    metrics: Metrics
    gate: Gate
    writer: Writer


def state(request: Request) -> AppState:
    st: AppState = request.app.state.playledger
    return st
