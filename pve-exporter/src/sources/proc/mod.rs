//! /proc: QEMU processes and their files, the /proc scan and the kernel's process events,
//! pressure stall files, the node's own files, and the ownership rules sources are held to.

pub mod events;
pub mod node;
pub mod pidfd;
pub mod pressure;
pub mod process;
pub mod scan;
pub mod trust;
