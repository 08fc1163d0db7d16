//! The unit tests of the load benchmark's std-only parts: its SVG charts and its sidecar proxies
//! (whose tests start haproxy and nginx when they are installed, and skip that part otherwise).
//! Cargo builds bench targets without running tests in them, so they run from here.

#[allow(dead_code)]
#[path = "../benches/load/chart.rs"]
mod chart;

#[allow(dead_code)]
#[path = "../benches/load/sidecar.rs"]
mod sidecar;
