"""`just load` (`python -m bench.load`): many clients against one real server for minutes, then
the verdict: no error the clients did not cause, memory and descriptors flat, nothing leaked.
See docs/operations.md#load-test."""
