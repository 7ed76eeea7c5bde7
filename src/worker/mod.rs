//! What runs on a worker's machine rather than on the central host: `evosync tunnel`, the `ProxyCommand` that
//! carries a worker's SSH session to the central host over HTTPS (`tunnel`). Nothing here is on the gate's path or
//! the service's: the central host never runs it.

pub mod tunnel;
