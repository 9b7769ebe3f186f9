//! Pure types with no I/O.

pub mod app;
pub mod event;
pub mod history;
pub mod signature;
pub mod topic;
pub mod webhook;
