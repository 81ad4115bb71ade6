"""Package build hook: writes client/sync.py, the blocking client generated from
client/aio.py (scripts/generate_sync_client.py), into the source tree before
the wheel or the editable install is built."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

GENERATED = "src/potok_state/client/sync.py"


class CustomBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        script = Path(self.root, "scripts", "generate_sync_client.py")
        spec = importlib.util.spec_from_file_location("generate_sync_client", script)
        assert spec is not None
        assert spec.loader is not None
        generator = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(generator)
        generator.TARGET.write_text(
            generator.generate(generator.SOURCE.read_text(encoding="utf-8")), encoding="utf-8"
        )
        if version != "editable":
            # Git ignores the file, and so would the wheel without this.
            build_data["force_include"][str(Path(self.root, GENERATED))] = (
                "potok_state/client/sync.py"
            )
