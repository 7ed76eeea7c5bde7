//! The file-system wing: every system call and every `unsafe` (`sys`), confinement beneath the replica root
//! (`confine`), the kernel sandbox of a child that reads or writes a run folder (`sandbox`), and landing a file
//! durably (`landing`).

pub mod confine;
pub mod landing;
pub mod locks;
pub mod sandbox;
#[allow(unsafe_code)] // the one module that may: each block has its SAFETY note
pub mod sys;
