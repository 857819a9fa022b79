"""Code every csbs-sim process shares: generated protobuf modules (csbs.v1), cluster config,
the clock, names, errors and the client wrappers."""
