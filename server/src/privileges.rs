//! After setup the server keeps only CAP_NET_RAW (capture) and CAP_NET_ADMIN
//! (firewall grants and reinstalls), in every capability set, including the
//! bounding set that limits what `nft`, `iptables` and `ipset` children get.

use caps::{CapSet, Capability, CapsHashSet};

/// Drops every capability but CAP_NET_RAW and CAP_NET_ADMIN.
pub fn drop_to_network_caps() -> Result<(), caps::errors::CapsError> {
    let keep: CapsHashSet = [Capability::CAP_NET_RAW, Capability::CAP_NET_ADMIN]
        .into_iter()
        .collect();
    // Already confined (systemd's CapabilityBoundingSet, whose seccomp filter
    // also denies capset(2)): nothing to drop.
    let within = |set| {
        caps::read(None, set)
            .map(|have| have.is_subset(&keep))
            .unwrap_or(false)
    };
    if within(CapSet::Bounding) && within(CapSet::Permitted) {
        return Ok(());
    }
    // The bounding set first: changing it needs CAP_SETPCAP, dropped below.
    // Caps that are already missing (systemd's CapabilityBoundingSet) are fine.
    for cap in caps::all() {
        if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap)?;
        }
    }
    caps::clear(None, CapSet::Ambient)?;
    caps::set(None, CapSet::Inheritable, &keep)?;
    caps::set(None, CapSet::Effective, &keep)?;
    caps::set(None, CapSet::Permitted, &keep)?;
    // Root's children get the bounding set back on exec; keep them in our
    // two as well by raising them as ambient caps for non-root service users.
    for cap in &keep {
        let _ = caps::raise(None, CapSet::Ambient, *cap);
    }
    Ok(())
}

/// The effective capabilities now, for the log line.
pub fn current() -> String {
    let mut names: Vec<String> = caps::read(None, CapSet::Effective)
        .map(|set| set.into_iter().map(|c| c.to_string()).collect())
        .unwrap_or_default();
    names.sort();
    names.join(",")
}
