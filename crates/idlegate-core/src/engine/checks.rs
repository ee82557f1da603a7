//! Invariant checks, for tests and fuzzing (never the packet path): every table is walked and
//! what must hold between any two calls is checked.

use super::*;

/// What [`Engine::check_invariants`] or [`Engine::check_shards`] found broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvariantError {
    /// The flow table: a flow not found by one of its keys, a stale key, an id free twice.
    #[error("flow table: {0}")]
    FlowTable(String),
    /// The timing wheel: a slot mislinked or wrongly marked, a live flow not filed or filed
    /// twice.
    #[error("timing wheel: {0}")]
    TimerWheel(String),
    /// A SNAT pool's lent ports and its count of them disagree.
    #[error("{0}")]
    SnatPool(String),
    /// A flow holds a SNAT port its pool does not mark lent, or another flow holds it too.
    #[error("flow {flow}'s SNAT port {port} is not its own")]
    SnatPortNotOwn { flow: FlowId, port: u16 },
    /// A pool of a lone engine counts another number of ports in use than it has users.
    #[error("a SNAT pool counts {lent} ports in use for {users} flows")]
    SnatUsers { lent: usize, users: usize },
    /// A pool the shards share counts another number of ports in use than their flows hold.
    #[error("a shared SNAT pool counts {lent} ports in use for {users} flows")]
    SharedSnatUsers { lent: usize, users: usize },
    /// `max_flows` counts more places than it allows, or (for a lone engine) another number
    /// than it has flows.
    #[error("{flows} flows, {held} places taken, max_flows {max}")]
    FlowLimit {
        flows: usize,
        held: usize,
        max: usize,
    },
    /// The shards' flows together and the shared `max_flows` count disagree.
    #[error("{flows} flows in {shards} shards, {held} places taken")]
    ShardFlowLimit {
        flows: usize,
        shards: usize,
        held: usize,
    },
    /// Engines checked as shards that do not share one `max_flows`.
    #[error("shards that do not share one max_flows")]
    UnsharedFlowLimit,
    /// Engines checked as shards that do not share their SNAT pools.
    #[error("shards that do not share their SNAT pools")]
    UnsharedSnat,
}

impl Engine {
    /// Checks what must hold between any two calls, walking every table (for tests and
    /// fuzzing, not the packet path): every flow is found by both of its keys and the index
    /// holds nothing else; the timing wheel holds exactly the live flows, each once and well
    /// linked; no SNAT port is lent to two flows, every outbound flow's port is lent, and (for
    /// an engine that is not one of several shards) each pool counts its users exactly.
    pub fn check_invariants(&self) -> Result<(), InvariantError> {
        self.v4.check_invariants()?;
        self.v6.check_invariants()?;
        let limit = &self.v4.limit;
        let held = limit.held.load(Ordering::Relaxed);
        // One engine (its two families hold the limit) must account for every flow exactly;
        // shards share it, so each sees only a part.
        let alone = Arc::strong_count(limit) == 2;
        if held > limit.max || (alone && held != self.flow_count()) {
            return Err(InvariantError::FlowLimit {
                flows: self.flow_count(),
                held,
                max: limit.max,
            });
        }
        Ok(())
    }

    /// Checks shards made together by [`Engine::sharded`] (for tests and fuzzing): each one's
    /// own invariants, and across them the shared `max_flows` count taken by exactly their
    /// flows, and each shared SNAT pool lending exactly the ports their flows hold, none twice.
    pub fn check_shards(shards: &[Engine]) -> Result<(), InvariantError> {
        let Some(first) = shards.first() else {
            return Ok(());
        };
        for shard in shards {
            shard.check_invariants()?;
            if !Arc::ptr_eq(&shard.v4.limit, &first.v4.limit) {
                return Err(InvariantError::UnsharedFlowLimit);
            }
        }
        let held = first.v4.limit.held.load(Ordering::Relaxed);
        let flows: usize = shards.iter().map(Engine::flow_count).sum();
        if held != flows {
            return Err(InvariantError::ShardFlowLimit {
                flows,
                shards: shards.len(),
                held,
            });
        }
        let v4: Vec<&Core<SocketAddrV4>> = shards.iter().map(|s| &s.v4).collect();
        let v6: Vec<&Core<SocketAddrV6>> = shards.iter().map(|s| &s.v6).collect();
        check_shared_snat(&v4)?;
        check_shared_snat(&v6)
    }
}

impl<E: Endpoint> Core<E> {
    /// The SNAT ports this core's flows hold, by pool, failing if one is held twice or is not
    /// marked lent in its pool (see [`Engine::check_shards`]).
    pub(super) fn snat_ports_held(
        &self,
        pools: &[SnatPorts<E::Ip>],
        held: &mut std::collections::HashSet<(usize, u16)>,
        users: &mut [usize],
    ) -> Result<(), InvariantError> {
        for (id, flow) in self.flows.iter() {
            let Some(snat) = self.snat_of(flow.rule) else {
                continue;
            };
            users[snat] += 1;
            if self.snat_allocation == Allocation::PreservePort {
                continue;
            }
            let port = flow.public.port();
            if !pools[snat].is_lent(port) || !held.insert((snat, port)) {
                return Err(InvariantError::SnatPortNotOwn { flow: id, port });
            }
        }
        Ok(())
    }

    /// See [`Engine::check_invariants`].
    pub(super) fn check_invariants(&self) -> Result<(), InvariantError> {
        self.flows.check().map_err(InvariantError::FlowTable)?;
        let live: Vec<FlowId> = self.flows.iter().map(|(id, _)| id).collect();
        self.wheel
            .check(&self.flows, &live)
            .map_err(InvariantError::TimerWheel)?;
        let pools = self.snat_pools();
        let mut users = vec![0usize; pools.len()];
        self.snat_ports_held(&pools, &mut Default::default(), &mut users)?;
        for (pool, users) in pools.iter().zip(users) {
            pool.check().map_err(InvariantError::SnatPool)?;
            // Shards share the pools: only a lone engine sees every user of a port.
            if Arc::strong_count(&self.snat) == 1 && pool.lent() != users {
                return Err(InvariantError::SnatUsers {
                    lent: pool.lent(),
                    users,
                });
            }
        }
        Ok(())
    }
}

/// The SNAT pools one family's shards share lend exactly the ports of the shards' flows.
fn check_shared_snat<E: Endpoint>(cores: &[&Core<E>]) -> Result<(), InvariantError> {
    let Some(first) = cores.first() else {
        return Ok(());
    };
    let pools = first.snat_pools();
    let mut users = vec![0usize; pools.len()];
    let mut held = std::collections::HashSet::new();
    for core in cores {
        if !Arc::ptr_eq(&core.snat, &first.snat) {
            return Err(InvariantError::UnsharedSnat);
        }
        core.snat_ports_held(&pools, &mut held, &mut users)?;
    }
    for (pool, users) in pools.iter().zip(users) {
        if pool.lent() != users {
            return Err(InvariantError::SharedSnatUsers {
                lent: pool.lent(),
                users,
            });
        }
    }
    Ok(())
}
