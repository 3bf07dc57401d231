//! Storage sizes: statvfs of mounts, ZFS and LVM (through their commands, time-limited).

pub mod command;
pub mod lvm;
pub mod statvfs;
pub mod zfs;
