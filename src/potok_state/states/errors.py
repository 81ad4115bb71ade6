from __future__ import annotations

from potok_state.kit.errors import Conflict, InvalidInput, NotFound, PreconditionFailed


class StateNotFound(NotFound):
    code = "state_not_found"


class MachineNotFound(NotFound):
    code = "state_machine_not_found"


class InvalidTransition(Conflict):
    code = "invalid_transition"


class VersionMismatch(PreconditionFailed):
    code = "version_mismatch"


class UnknownStatus(InvalidInput):
    code = "unknown_status"


class ReservedId(InvalidInput):
    code = "reserved_id"


class UnknownEntityType(InvalidInput):
    code = "unknown_entity_type"


class MetadataTooLarge(InvalidInput):
    code = "metadata_too_large"


class InvalidMetadata(InvalidInput):
    code = "invalid_metadata"


class InvalidQuery(InvalidInput):
    code = "invalid_query"


class BatchRejected(Conflict):
    code = "batch_rejected"


class BatchInvalid(InvalidInput):
    code = "batch_rejected"


class EmptyUpdate(InvalidInput):
    code = "empty_update"
