//! Wire formats only: bytes to typed frames and back, with no I/O.

pub mod phoenix;
