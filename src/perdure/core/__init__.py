"""Pure decisions and value types: statuses and transitions, errors, retry math, ids,
serialization, clocks. No I/O."""
