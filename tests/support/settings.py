"""The service's settings as environment variable names."""

from __future__ import annotations

from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from potok_state.settings import Settings, environment_name


def setting_names() -> set[str]:
    """Every environment variable the service reads (every alias of each)."""
    names: set[str] = set()

    def collect(model: type[BaseSettings]) -> None:
        prefix = str(model.model_config.get("env_prefix", ""))
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseSettings):
                collect(annotation)
            elif isinstance(field.validation_alias, AliasChoices):
                names.update(str(c) for c in field.validation_alias.choices if str(c).isupper())
            else:
                names.add(environment_name(prefix, name, field))

    collect(Settings)
    return names
