"""The `csbs` command line: talks to a running cluster's region nodes and coordinator over gRPC
and prints what they answer as aligned tables, or as JSON with `--json`."""
