"""The States API's errors, and how a batch reports its items' errors."""

from __future__ import annotations

from collections.abc import Mapping

from potok_state.kit.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    PreconditionFailed,
    ServiceError,
)
from potok_state.states.schemas import BatchRequest, ItemError


class StateNotFound(NotFound):
    code = "state_not_found"


class StateDeleted(NotFound):
    """Asked as of a point at which the state had been deleted."""

    code = "state_deleted"


class MachineNotFound(NotFound):
    code = "state_machine_not_found"


class InvalidMachineDefinition(InvalidInput):
    code = "invalid_state_machine"


class MachineReadOnly(Conflict):
    """A built-in or file-defined table: it changes with the deployment, not the API."""

    code = "state_machine_read_only"


class StatesStranded(Conflict):
    """The definition would leave states in statuses it does not have."""

    code = "states_stranded"


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


def item_error(error: ServiceError) -> ItemError:
    """One batch item's error, as its result shows it."""
    return ItemError(
        statusCode=error.status_code, code=error.code, message=error.message, details=error.details
    )


def batch_failure(batch: BatchRequest, failures: Mapping[int, ServiceError]) -> ServiceError:
    """An atomic batch refused: every failed item listed; 422 when any item was
    invalid, else 409."""
    listed = [
        {
            "index": index,
            "entityId": batch.items[index].entityId,
            **item_error(error).model_dump(),
        }
        for index, error in sorted(failures.items())
    ]
    invalid = any(error.status_code == 422 for error in failures.values())
    error_type = BatchInvalid if invalid else BatchRejected
    return error_type(
        f"{len(failures)} of {len(batch.items)} items failed; nothing was written.",
        details={"failures": listed},  # type: ignore[dict-item]
    )
