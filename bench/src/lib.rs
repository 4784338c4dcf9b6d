//! Shared code of the benchmark tools (`bench-upstream`, `bench-client`).
