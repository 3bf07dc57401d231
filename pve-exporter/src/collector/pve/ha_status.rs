//! ha_status: the HA manager's view of the cluster (`/cluster/ha/status/manager_status` and
//! `/cluster/ha/resources`, or the pmxcfs files they are made of). Cluster-wide: in local
//! scope only the CRM master emits it (see [`super::HaEmit`]).

use super::{ApiCtx, LocalCtx, PveCollector};
use crate::collector::Error;
use crate::{
    catalog::*,
    host::HostRoot,
    metrics::MetricSet,
    sources::{pve::api, pve::ha::HaState},
};

pub(super) struct HaStatusCollector;

impl PveCollector for HaStatusCollector {
    fn families(&self) -> &'static [&'static [&'static crate::catalog::Def]] {
        FAMILIES
    }

    fn name(&self) -> &'static str {
        "ha_status"
    }

    fn per_node(&self) -> bool {
        false
    }

    fn local_applies(&self, _host: &HostRoot, _node: Option<&str>, pve_node: bool) -> Result<(), Error> {
        if pve_node { Ok(()) } else { Err(Error::Unavailable("not a PVE node (no /etc/pve)")) }
    }

    fn local(&self, ctx: &LocalCtx, out: &mut MetricSet) -> Result<(), Error> {
        let (state, errors) = ctx
            .ha
            .read(ctx.host, ctx.pmxcfs, ctx.pmxcfs_timeout)
            .map_err(|e| Error::io(ctx.host.path("etc/pve/ha"), e))?;
        // No manager_status: HA has never run here. Nothing to report, nothing wrong.
        let Some(state) = state else { return Ok(()) };
        if ctx.emit.should_emit(&state.manager) {
            emit(&state, out);
        }
        Error::all_of(errors)
    }

    fn api(&self, ctx: &ApiCtx, _node: Option<&str>, out: &mut MetricSet) -> Result<(), Error> {
        const STATUS: &str = "/cluster/ha/status/manager_status";
        const RESOURCES: &str = "/cluster/ha/resources";
        let (manager, lrm) = api::parse_ha_manager_status(&ctx.api.get(STATUS)?).map_err(|e| e.input(STATUS))?;
        if !ctx.emit.should_emit(&manager) {
            return Ok(());
        }
        let resources = api::parse_ha_resources(&ctx.api.get(RESOURCES)?).map_err(|e| e.input(RESOURCES))?;
        emit(&HaState { manager, lrm, resources }, out);
        Ok(())
    }
}

pub(super) fn emit(st: &HaState, out: &mut MetricSet) {
    let m = &st.manager;
    let f = out.family(&PVE_HA_CRM_MASTER);
    for node in m.node_status.keys() {
        f.push([("node", node.clone())], m.master_node.as_ref() == Some(node));
    }
    let f = out.family(&PVE_HA_NODE_STATUS);
    for (node, status) in &m.node_status {
        f.push([("node", node.clone()), ("status", status.clone())], 1u64);
    }
    for (node, lrm) in &st.lrm {
        if let Some(ts) = lrm.timestamp {
            out.family(&PVE_HA_LRM_TIMESTAMP).push([("node", node.clone())], ts);
        }
    }
    for (node, lrm) in &st.lrm {
        if let Some(mode) = &lrm.mode {
            out.family(&PVE_HA_LRM_MODE).push([("node", node.clone()), ("mode", mode.clone())], 1u64);
        }
    }
    let mut resources: Vec<_> = st.resources.iter().collect();
    resources.sort_by(|a, b| a.sid.cmp(&b.sid));
    for r in resources {
        out.family(&PVE_HA_SERVICE_CONFIG).push(
            [
                ("sid", r.sid.clone()),
                ("type", r.kind.clone()),
                ("max_restart", r.max_restart.to_string()),
                ("max_relocate", r.max_relocate.to_string()),
                ("failback", if r.failback { "1" } else { "0" }.to_string()),
            ],
            1u64,
        );
    }
    for (sid, s) in &m.service_status {
        out.family(&PVE_HA_SERVICE_STATUS)
            .push([("sid", sid.clone()), ("node", s.node.clone()), ("state", s.state.clone())], 1u64);
    }
}

/// The catalogue sections this collector fills.
static FAMILIES: &[&[&crate::catalog::Def]] = &[crate::catalog::PVE_HA];
