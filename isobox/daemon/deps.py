"""What every route module needs: the engine of the running app."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from isobox.engine import Engine


async def get_engine(request: Request) -> Engine:
    # async: a plain attribute read should not cost a thread-pool hop.
    engine: Engine = request.app.state.engine
    return engine


EngineDep = Annotated[Engine, Depends(get_engine)]
