"""The node's domain operations, one module per resource: they check what a call asks (each
refusal a csbs.errors domain error naming the rule or field), then call the catalog and the
engine. Plain Python: no SQL and no gRPC here."""
