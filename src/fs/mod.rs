//! The file-system wing: every system call and every `unsafe` (`sys`), confinement beneath the replica root
//! (`confine`), and landing a file durably (`landing`).

pub mod confine;
pub mod landing;
#[allow(unsafe_code)] // the one module that may: each block has its SAFETY note
pub mod sys;
