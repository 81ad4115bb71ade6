"""The change pipeline (docs/architecture.md): every write of the service is a
`Mutation` decided over the current states and applied by the store with one
revision, one history row and one outbox event, in one transaction."""
