"""Request parameters several routers declare alike: an entity type and id in
the path, and a page's size and cursor."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

from potok_state.names import ENTITY_ID_PATTERN, ENTITY_TYPE_PATTERN

EntityPath = Annotated[str, Path(pattern=ENTITY_TYPE_PATTERN, description="Entity type.")]
EntityIdPath = Annotated[str, Path(pattern=ENTITY_ID_PATTERN, description="Entity id.")]
PageLimit = Annotated[int, Query(ge=1, le=500)]
PageCursor = Annotated[str | None, Query(max_length=512)]
