//! Whole trees: a confined sorted walk (`walk`) of directories listed in
//! bounded memory (`listing`), the manifest formats that
//! `sha256sum`, BSD tools and BagIt read and write (`format`), and the
//! pipeline that hashes a walk on the CPU pool in order (`manifest`).

pub mod check;
pub mod format;
pub mod listing;
pub mod manifest;
pub mod walk;
