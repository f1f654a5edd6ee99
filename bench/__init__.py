"""edgestack benchmarks: each module measures one part beside the reference it is judged against.

Benchmarks print figures; they are never part of the pass/fail tests. Run them all with
`bash bench/run`, or some with `bash bench/run kv dns` (see bench/README.md).
"""
