//! The pipeline for datagrams: verify → consume → durable replay state →
//! grant. The order is the security argument: nothing is granted before the
//! knock's consumption is on disk, and nothing is consumed before every check
//! has passed.
//!
//! Knocks that arrive together are granted together ([`Admitted`]): each is
//! verified and consumed as it is read, and once nothing more is queued
//! what the replay guard learnt from all of them is made durable with one
//! write and one fsync, before any of them is granted. A burst of a
//! thousand knocks thus costs a few fsyncs, not a thousand.

use std::io;
use std::net::IpAddr;
use std::time::SystemTime;

use knock_proto::{Consumed, ReplayGuard};

use crate::firewall::{Firewall, FirewallError};
use crate::state::ReplayStore;
use crate::verify::{Grant, Rejection, Verifier};

/// What became of one datagram.
#[derive(Debug)]
pub enum Outcome {
    Granted(Grant),
    Rejected(Rejection),
    /// Verified, but the replay state could not be made durable, so nothing
    /// was granted (fail-closed).
    StateNotDurable(Grant, io::Error),
    /// Verified and recorded, but the firewall refused the grant.
    FirewallFailed(Grant, FirewallError),
}

/// Knocks consumed and not yet granted: their replay state must be made
/// durable first ([`Admitted::grant_all`]).
#[derive(Debug, Default)]
pub struct Admitted {
    grants: Vec<(Grant, SystemTime)>,
    /// What the replay guard remembers of each.
    consumed: Vec<Consumed>,
}

impl Admitted {
    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }

    pub fn len(&self) -> usize {
        self.grants.len()
    }

    /// Verifies one datagram and, if it passes, consumes it and keeps it
    /// to be granted. `arrived` is when it reached this host.
    pub fn admit(
        &mut self,
        verifier: &mut Verifier,
        payload: &[u8],
        source: IpAddr,
        now_ms: u64,
        arrived: SystemTime,
    ) -> Result<(), Rejection> {
        let pending = verifier.verify(payload, source, now_ms)?;
        let (grant, consumed) = verifier.consume(pending, now_ms);
        self.grants.push((grant, arrived));
        self.consumed.push(consumed);
        Ok(())
    }

    /// Makes the replay state durable once for all the knocks admitted
    /// (`guard` being the guard that consumed them), then grants each; says
    /// what became of each, with when it arrived.
    pub fn grant_all(
        &mut self,
        store: &mut dyn ReplayStore,
        firewall: &mut dyn Firewall,
        guard: &ReplayGuard,
    ) -> Vec<(Outcome, SystemTime)> {
        let grants = std::mem::take(&mut self.grants);
        let consumed = std::mem::take(&mut self.consumed);
        if grants.is_empty() {
            return Vec::new();
        }
        if let Err(err) = store.persist(guard, &consumed) {
            return grants
                .into_iter()
                .map(|(grant, arrived)| {
                    let err = io::Error::new(err.kind(), err.to_string());
                    (Outcome::StateNotDurable(grant, err), arrived)
                })
                .collect();
        }
        grants
            .into_iter()
            .map(|(grant, arrived)| {
                let outcome = match firewall.grant(grant.addr, &grant.ports, grant.duration) {
                    Ok(()) => Outcome::Granted(grant),
                    Err(err) => Outcome::FirewallFailed(grant, err),
                };
                (outcome, arrived)
            })
            .collect()
    }
}

/// Honours one datagram from `source` at `now_ms`, if it deserves it: a
/// batch of one.
pub fn honour(
    verifier: &mut Verifier,
    store: &mut dyn ReplayStore,
    firewall: &mut dyn Firewall,
    payload: &[u8],
    source: IpAddr,
    now_ms: u64,
) -> Outcome {
    let mut admitted = Admitted::default();
    if let Err(rejection) = admitted.admit(verifier, payload, source, now_ms, SystemTime::now()) {
        return Outcome::Rejected(rejection);
    }
    match admitted
        .grant_all(store, firewall, verifier.replay_guard())
        .pop()
    {
        Some((outcome, _)) => outcome,
        // Not reached: one knock was admitted.
        None => Outcome::Rejected(Rejection::UnknownClient),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use knock_proto::{seal, ClientSecret, PairKeys, PortSpec, Request, Sealer, ServerId};

    use std::time::SystemTime;

    use super::*;
    use crate::firewall::memory::MemoryFirewall;
    use crate::verify::fixtures::{
        addr, client, forged_knock, knock, policy, public_client, public_knock, randomness, reload,
        verifier, NOW, SERVER,
    };

    #[derive(Default)]
    struct MemoryStore {
        writes: Vec<Vec<u8>>,
        full: bool,
    }

    /// Keeps each state made durable whole.
    impl ReplayStore for MemoryStore {
        fn persist(&mut self, guard: &ReplayGuard, _: &[Consumed]) -> std::io::Result<()> {
            if self.full {
                return Err(std::io::Error::other("No space left on device"));
            }
            self.writes.push(guard.encode());
            Ok(())
        }
    }

    #[test]
    fn grants_the_sender_once() {
        let mut v = verifier(&[client("alice", 1, &[4992])]);
        let (mut store, mut fw) = (MemoryStore::default(), MemoryFirewall::default());
        let k = knock(1, &[4992], None, NOW, SERVER);
        let a = addr("198.18.0.2");
        match honour(&mut v, &mut store, &mut fw, &k, a, NOW + 5) {
            Outcome::Granted(g) => {
                assert_eq!(g.addr, a);
                assert_eq!(g.duration, Duration::from_secs(30));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            fw.granted,
            vec![(a, vec![PortSpec::tcp(4992)], Duration::from_secs(30))]
        );
        assert_eq!(store.writes.len(), 1, "state made durable before the grant");
        // The same bytes again, from anywhere, are a replay.
        for from in [a, addr("198.18.0.66"), addr("fd00:18::66")] {
            match honour(&mut v, &mut store, &mut fw, &k, from, NOW + 10) {
                Outcome::Rejected(r) => assert_eq!(r.reason(), "replay"),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(fw.granted.len(), 1);
    }

    /// Knocks read together are made durable together: one write of a
    /// state that records all of them, before the first grant.
    #[test]
    fn a_batch_is_made_durable_once_before_any_grant() {
        let clients: Vec<_> = (1..=20u8)
            .map(|i| client(&format!("c{i}"), i, &[4992]))
            .collect();
        let mut v = verifier(&clients);
        let (mut store, mut fw) = (MemoryStore::default(), MemoryFirewall::default());
        let mut admitted = Admitted::default();
        let a = addr("198.18.0.2");
        for i in 1..=20u8 {
            let k = knock(i, &[4992], None, NOW, SERVER);
            admitted
                .admit(&mut v, &k, a, NOW, SystemTime::now())
                .expect("valid");
        }
        assert_eq!(admitted.len(), 20);
        assert!(
            store.writes.is_empty() && fw.granted.is_empty(),
            "nothing yet"
        );
        let outcomes = admitted.grant_all(&mut store, &mut fw, v.replay_guard());
        assert_eq!(outcomes.len(), 20);
        assert!(outcomes
            .iter()
            .all(|(o, _)| matches!(o, Outcome::Granted(_))));
        assert_eq!(store.writes.len(), 1, "one durable write for the batch");
        assert_eq!(fw.granted.len(), 20);
        // That one state records every knock of the batch: restored from
        // it, each one is a replay.
        let restored =
            knock_proto::ReplayGuard::restore(30_000, NOW, &store.writes[0], None).expect("state");
        let mut v2 = crate::verify::Verifier::new(
            crate::verify::fixtures::identity(),
            crate::verify::fixtures::roster(&clients),
            policy(),
            restored,
        );
        for i in 1..=20u8 {
            let k = knock(i, &[4992], None, NOW, SERVER);
            match v2.verify(&k, a, NOW) {
                Err(r) => assert_eq!(r.reason(), "replay"),
                Ok(p) => panic!("{p:?}"),
            }
        }
        // A batch whose state cannot be made durable grants none.
        let mut admitted = Admitted::default();
        for i in 1..=3u8 {
            let k = knock(i, &[4992], None, NOW + 1, SERVER);
            admitted
                .admit(&mut v, &k, a, NOW + 1, SystemTime::now())
                .unwrap();
        }
        store.full = true;
        let outcomes = admitted.grant_all(&mut store, &mut fw, v.replay_guard());
        assert!(outcomes
            .iter()
            .all(|(o, _)| matches!(o, Outcome::StateNotDurable(..))));
        assert_eq!(fw.granted.len(), 20);
    }

    /// One client knocking in a loop gets its burst, then waits its turn;
    /// another client is not slowed, and a limited knock is not consumed.
    #[test]
    fn one_client_cannot_take_every_grant() {
        use crate::grant_limit::{GRANT_BURST, GRANT_EVERY_MS};
        let mut v = verifier(&[client("busy", 1, &[4992]), client("other", 2, &[4992])]);
        let (mut store, mut fw) = (MemoryStore::default(), MemoryFirewall::default());
        let a = addr("198.18.0.2");
        for n in 0..GRANT_BURST {
            let k = knock(1, &[4992], None, NOW + n, SERVER);
            assert!(matches!(
                honour(&mut v, &mut store, &mut fw, &k, a, NOW + n),
                Outcome::Granted(_)
            ));
        }
        let limited = knock(1, &[4992], None, NOW + 100, SERVER);
        match honour(&mut v, &mut store, &mut fw, &limited, a, NOW + 100) {
            Outcome::Rejected(r) => assert_eq!(r.reason(), "rate-limited"),
            other => panic!("{other:?}"),
        }
        let writes = store.writes.len();
        let k = knock(2, &[4992], None, NOW + 100, SERVER);
        assert!(matches!(
            honour(&mut v, &mut store, &mut fw, &k, a, NOW + 100),
            Outcome::Granted(_)
        ));
        assert_eq!(
            store.writes.len(),
            writes + 1,
            "no write for the limited one"
        );
        // Not consumed: the same knock is honoured once its turn comes.
        let later = NOW + GRANT_EVERY_MS;
        v.tick(later);
        assert!(matches!(
            honour(&mut v, &mut store, &mut fw, &limited, a, later),
            Outcome::Granted(_)
        ));
    }

    #[test]
    fn source_mismatch_does_not_burn_the_knock() {
        let mut v = verifier(&[client("alice", 1, &[4992])]);
        let (mut store, mut fw) = (MemoryStore::default(), MemoryFirewall::default());
        let owner = addr("198.18.0.2");
        let k = knock(1, &[4992], Some(owner), NOW, SERVER);
        match honour(&mut v, &mut store, &mut fw, &k, addr("198.18.0.66"), NOW) {
            Outcome::Rejected(r) => assert_eq!(r.reason(), "source-mismatch"),
            other => panic!("{other:?}"),
        }
        assert!(fw.granted.is_empty() && store.writes.is_empty());
        assert!(matches!(
            honour(&mut v, &mut store, &mut fw, &k, owner, NOW),
            Outcome::Granted(_)
        ));
    }

    #[test]
    fn refuses_ports_not_permitted_and_unknown_servers() {
        let mut v = verifier(&[client("alice", 1, &[4992])]);
        let (mut store, mut fw) = (MemoryStore::default(), MemoryFirewall::default());
        let a = addr("198.18.0.2");
        let cases = [
            (knock(1, &[22], None, NOW, SERVER), "port-not-permitted"),
            (
                knock(1, &[4992, 80], None, NOW + 1, SERVER),
                "port-not-permitted",
            ),
            (
                knock(1, &[4992], None, NOW + 2, ServerId([8; 16])),
                "unknown-client",
            ),
            (knock(2, &[4992], None, NOW + 3, SERVER), "unknown-client"),
            (knock(1, &[4992], None, NOW - 120_000, SERVER), "too-old"),
            (
                knock(1, &[4992], None, NOW - 3_600_000, SERVER),
                "unknown-client",
            ),
            (knock(1, &[4992], None, NOW - 31_000, SERVER), "too-old"),
            (knock(1, &[4992], None, NOW + 31_000, SERVER), "from-future"),
            (vec![0u8; 10], "bad-length"),
            (
                knock(1, &[4992], None, NOW + 4, SERVER),
                "implausible-source@255.255.255.255",
            ),
            (
                knock(1, &[4992], None, NOW + 5, SERVER),
                "implausible-source@0.0.0.0",
            ),
            (
                knock(1, &[4992], None, NOW + 6, SERVER),
                "implausible-source@ff02::1",
            ),
        ];
        for (k, reason) in cases {
            let (reason, from) = match reason.split_once('@') {
                Some((reason, from)) => (reason, addr(from)),
                None => (reason, a),
            };
            match honour(&mut v, &mut store, &mut fw, &k, from, NOW) {
                Outcome::Rejected(r) => assert_eq!(r.reason(), reason),
                other => panic!("{reason}: {other:?}"),
            }
        }
        assert!(fw.granted.is_empty());
        // None of the refusals consumed anything: a good knock still works.
        assert!(matches!(
            honour(
                &mut v,
                &mut store,
                &mut fw,
                &knock(1, &[4992], None, NOW, SERVER),
                a,
                NOW
            ),
            Outcome::Granted(_)
        ));
    }

    #[test]
    fn a_knock_from_the_host_itself_is_honoured() {
        let mut v = verifier(&[client("alice", 1, &[4992])]);
        let (mut store, mut fw) = (MemoryStore::default(), MemoryFirewall::default());
        for (at, from) in [(NOW, "127.0.0.1"), (NOW + 1, "::1")] {
            let k = knock(1, &[4992], None, at, SERVER);
            assert!(matches!(
                honour(&mut v, &mut store, &mut fw, &k, addr(from), NOW),
                Outcome::Granted(_)
            ));
        }
    }

    #[test]
    fn a_full_disk_means_no_grant() {
        let mut v = verifier(&[client("alice", 1, &[4992])]);
        let mut store = MemoryStore {
            full: true,
            ..Default::default()
        };
        let mut fw = MemoryFirewall::default();
        let k = knock(1, &[4992], None, NOW, SERVER);
        assert!(matches!(
            honour(&mut v, &mut store, &mut fw, &k, addr("198.18.0.2"), NOW),
            Outcome::StateNotDurable(..)
        ));
        assert!(fw.granted.is_empty());
    }

    #[test]
    fn reload_revokes_removed_clients_and_keeps_replay_memory() {
        let alice = client("alice", 1, &[4992]);
        let bob = client("bob", 2, &[22]);
        let mut v = verifier(&[alice.clone(), bob.clone()]);
        let (mut store, mut fw) = (MemoryStore::default(), MemoryFirewall::default());
        let a = addr("198.18.0.2");
        let used = knock(1, &[4992], None, NOW, SERVER);
        assert!(matches!(
            honour(&mut v, &mut store, &mut fw, &used, a, NOW),
            Outcome::Granted(_)
        ));
        reload(&mut v, &[alice], policy());
        match honour(
            &mut v,
            &mut store,
            &mut fw,
            &knock(2, &[22], None, NOW + 1, SERVER),
            a,
            NOW,
        ) {
            Outcome::Rejected(r) => assert_eq!(r.reason(), "unknown-client"),
            other => panic!("{other:?}"),
        }
        match honour(&mut v, &mut store, &mut fw, &used, a, NOW) {
            Outcome::Rejected(r) => assert_eq!(r.reason(), "replay"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn requested_duration_is_capped() {
        let mut capped = client("alice", 1, &[4992]);
        capped.max_open_for = Some(Duration::from_secs(10));
        let mut v = verifier(&[capped]);
        let (mut store, mut fw) = (MemoryStore::default(), MemoryFirewall::default());
        let request = Request {
            ports: vec![PortSpec::tcp(4992)],
            duration_s: 3600,
            bound_addr: None,
        };
        let k = seal(
            &PairKeys::shared(&ClientSecret::from_bytes([1; 32]), &SERVER),
            &Sealer::Shared,
            &request,
            NOW,
            &randomness(1),
        )
        .unwrap();
        match honour(&mut v, &mut store, &mut fw, &k, addr("198.18.0.2"), NOW) {
            Outcome::Granted(g) => assert_eq!(g.duration, Duration::from_secs(10)),
            other => panic!("{other:?}"),
        }
    }

    /// A public-key client's knock is granted once; its replays, from
    /// anywhere, are refused without a signature check; a forgery by a
    /// holder of the server's key grants nothing and consumes nothing.
    #[test]
    fn public_knocks_are_granted_once_and_forgeries_never() {
        let mut v = verifier(&[
            client("alice", 1, &[4992]),
            public_client("bob", 2, &[4992]),
        ]);
        let (mut store, mut fw) = (MemoryStore::default(), MemoryFirewall::default());
        let a = addr("198.18.0.2");
        let k = public_knock(2, &[4992], None, NOW);
        let forged = forged_knock(2, NOW + 1, false);
        match honour(&mut v, &mut store, &mut fw, &forged, a, NOW) {
            Outcome::Rejected(r) => assert_eq!(r.reason(), "bad-signature"),
            other => panic!("{other:?}"),
        }
        assert!(fw.granted.is_empty() && store.writes.is_empty());
        // Bob is held down for 20 s, then his knock (not consumed) opens.
        let later = NOW + crate::sig_limit::SIG_FAILURE_EVERY_MS;
        match honour(&mut v, &mut store, &mut fw, &k, a, NOW + 2) {
            Outcome::Rejected(r) => assert_eq!(r.reason(), "sig-limited"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            honour(&mut v, &mut store, &mut fw, &k, a, later),
            Outcome::Granted(Grant { ref client, .. }) if client == "bob"
        ));
        let checks = v.signature_counts().checked;
        for from in [a, addr("198.18.0.66"), addr("fd00:18::66")] {
            match honour(&mut v, &mut store, &mut fw, &k, from, later + 10) {
                Outcome::Rejected(r) => assert_eq!(r.reason(), "replay"),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            v.signature_counts().checked,
            checks,
            "replays cost no check"
        );
        assert_eq!(fw.granted.len(), 1);
        assert_eq!(store.writes.len(), 1);
    }
}
