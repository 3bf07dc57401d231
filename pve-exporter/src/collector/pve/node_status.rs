//! node_status: load, swap, root file system, KSM and boot mode of each node
//! (`/nodes/<node>/status`, or the node's own /proc, statvfs and /sys/firmware).

use super::{ApiCtx, LocalCtx, PveCollector};
use crate::collector::Error;
use crate::{
    catalog::*,
    host::HostRoot,
    metrics::MetricSet,
    sources::{
        proc::node::{self, NodeStatus},
        pve::api,
    },
};

pub(super) struct NodeStatusCollector;

impl PveCollector for NodeStatusCollector {
    fn families(&self) -> &'static [&'static [&'static crate::catalog::Def]] {
        FAMILIES
    }

    fn name(&self) -> &'static str {
        "node_status"
    }

    fn per_node(&self) -> bool {
        true
    }

    fn local_applies(&self, host: &HostRoot, node: Option<&str>, _pve_node: bool) -> Result<(), Error> {
        node.ok_or(Error::Unavailable("this node's name is unknown (no /proc/sys/kernel/hostname)"))?;
        // Every live host has it; a host root without it (a fixture tree) has no node status.
        if !host.path("proc/loadavg").exists() {
            return Err(Error::io(host.path("proc/loadavg"), std::io::ErrorKind::NotFound.into()));
        }
        Ok(())
    }

    fn local(&self, ctx: &LocalCtx, out: &mut MetricSet) -> Result<(), Error> {
        let node = ctx.emit.node()?;
        let mut errors = Vec::new();
        let st = node::read_node_status(ctx.host, ctx.files, ctx.statvfs, ctx.statvfs_timeout, &mut errors);
        emit(node, &st, out);
        Error::all_of(errors)
    }

    fn api(&self, ctx: &ApiCtx, node: Option<&str>, out: &mut MetricSet) -> Result<(), Error> {
        let node = node.ok_or(Error::Unavailable("no node"))?;
        let path = format!("/nodes/{node}/status");
        let st = api::parse_node_status(&ctx.api.get(&path)?).map_err(|e| e.input(path.clone()))?;
        emit(node, &st, out);
        Ok(())
    }
}

/// The families of one node's status; parts that are unknown are left out.
pub(super) fn emit(node: &str, st: &NodeStatus, out: &mut MetricSet) {
    let n = || [("node", node.to_string())];
    if let Some([l1, l5, l15]) = st.load {
        out.family(&PVE_NODE_LOAD1).push(n(), l1);
        out.family(&PVE_NODE_LOAD5).push(n(), l5);
        out.family(&PVE_NODE_LOAD15).push(n(), l15);
    }
    if let Some(s) = st.swap {
        out.family(&PVE_NODE_SWAP_TOTAL).push(n(), s.total);
        out.family(&PVE_NODE_SWAP_USED).push(n(), s.used);
        out.family(&PVE_NODE_SWAP_FREE).push(n(), s.free);
    }
    if let Some(r) = st.rootfs {
        out.family(&PVE_NODE_ROOTFS_TOTAL).push(n(), r.total);
        out.family(&PVE_NODE_ROOTFS_USED).push(n(), r.used);
        out.family(&PVE_NODE_ROOTFS_AVAILABLE).push(n(), r.avail);
    }
    if let Some(k) = st.ksm_shared {
        out.family(&PVE_NODE_KSM_SHARED).push(n(), k);
    }
    if let Some(b) = &st.boot {
        let sb = if b.secureboot { "1" } else { "0" };
        out.family(&PVE_NODE_BOOT_MODE_INFO)
            .push([("node", node.to_string()), ("mode", b.mode.clone()), ("secureboot", sb.to_string())], 1u64);
    }
}

/// The catalogue sections this collector fills.
static FAMILIES: &[&[&crate::catalog::Def]] = &[crate::catalog::PVE_NODE_FAMILIES];
