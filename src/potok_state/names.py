"""What names look like (DESIGN.md §2; docs/data-model.md): entity types,
entity ids and statuses. One definition for the API's validation, the
transition tables and the scopes of API keys."""

ENTITY_TYPE_PATTERN = r"^[a-z][a-z0-9_-]{0,63}$"
ENTITY_ID_PATTERN = r"^[A-Za-z0-9._:@-]{1,128}$"
STATUS_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
