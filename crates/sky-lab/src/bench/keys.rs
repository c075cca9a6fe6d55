//! The population's address keys: each member's key pair comes from a
//! deterministic seed ([`super::seed`]), is derived once, in parallel, when
//! a thread sets up, and signs that member's registrations with the cookie
//! of its home socket at each of its owners. The measured loop reuses those
//! signatures: deriving a key pair and signing each cost about 15 µs, a
//! hundred times a request.

use std::ops::Range;

use sky_node::probe::AddrSecret;
use sky_proto::wire::{AddrKey, Cookie, Flags, Signature, VirtualAddr};

use super::targets::Targets;

/// Members derived by one worker before the work is split at all.
const PER_WORKER: usize = 4096;

/// The flags of every registration the bench sends.
pub(super) const FLAGS: Flags = Flags(0);

/// A registration's signature and the cookie it signs (zero: none yet).
#[derive(Clone, Copy, Default)]
struct Signed {
    cookie: Cookie,
    sig: Signature,
}

/// What [`derive`] computes for each member of a slice besides its address.
pub(super) struct Plan<'a> {
    /// Keep the public keys (the modes whose measured loop registers); kept
    /// anyway with [`Plan::sign`].
    pub(super) keys: bool,
    /// Sign each member's registration with each of its owners, with the
    /// cookie `cookies[socket][node]` of its home socket (slice index `j`
    /// lives on socket `j % cookies.len()`).
    pub(super) sign: Option<&'a [Vec<Cookie>]>,
}

/// The keys and registration signatures of one thread's slice of the
/// population, by slice index.
#[derive(Default)]
pub(super) struct Proofs {
    /// Population index of slice index 0.
    start: usize,
    /// Slice member `j`'s public key (empty without [`Plan::keys`]).
    keys: Vec<AddrKey>,
    /// Member `j`'s registration with its `k`-th owner at
    /// `signed[j * per_member + k]`.
    signed: Vec<Signed>,
    per_member: usize,
}

impl Proofs {
    /// Slots per member: registrations with its owners, at most.
    pub(super) fn per_member(targets: &Targets) -> usize {
        if targets.is_sky() {
            sky_proto::ring::MAX_REPLICAS
        } else {
            1
        }
    }

    /// Forgets the keys and signatures (setup is done with them).
    pub(super) fn clear(&mut self) {
        self.keys = Vec::new();
        self.signed = Vec::new();
    }

    /// Slice member `j`'s key and its signature of a registration with its
    /// `k`-th owner under `cookie`: the one made at setup, or, if the cookie
    /// changed since (or nothing was signed), a new one, kept.
    pub(super) fn register(&mut self, j: usize, k: usize, cookie: Cookie) -> (AddrKey, Signature) {
        let slot = j * self.per_member + k;
        if let (Some(&key), Some(s)) = (self.keys.get(j), self.signed.get(slot))
            && s.cookie == cookie
        {
            return (key, s.sig);
        }
        let secret = super::secret(self.start + j);
        let sig = secret.sign_register(&cookie, FLAGS);
        if let Some(s) = self.signed.get_mut(slot) {
            *s = Signed { cookie, sig };
        }
        (secret.key(), sig)
    }
}

/// The addresses of population members `range`, and what `plan` asks for
/// besides, derived on up to `workers` threads.
pub(super) fn derive(
    targets: &Targets,
    range: Range<usize>,
    plan: &Plan<'_>,
    workers: usize,
) -> (Vec<VirtualAddr>, Proofs) {
    let per_member = Proofs::per_member(targets);
    let plan = &Plan {
        keys: plan.keys || plan.sign.is_some(),
        sign: plan.sign,
    };
    let n = range.len();
    let workers = workers.clamp(1, n.div_ceil(PER_WORKER).max(1));
    let chunk = n.div_ceil(workers).max(1);
    let parts: Vec<Part> = if workers == 1 {
        vec![derive_part(targets, &range, 0..n, plan, per_member)]
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .step_by(chunk)
                .map(|lo| {
                    let range = &range;
                    s.spawn(move || {
                        derive_part(targets, range, lo..(lo + chunk).min(n), plan, per_member)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a key derivation thread panicked"))
                .collect()
        })
    };
    let mut addresses = Vec::with_capacity(n);
    let mut proofs = Proofs {
        start: range.start,
        keys: Vec::with_capacity(if plan.keys { n } else { 0 }),
        signed: Vec::with_capacity(if plan.sign.is_some() {
            n * per_member
        } else {
            0
        }),
        per_member,
    };
    for p in parts {
        addresses.extend(p.addresses);
        proofs.keys.extend(p.keys);
        proofs.signed.extend(p.signed);
    }
    (addresses, proofs)
}

/// One worker's share of [`derive`].
struct Part {
    addresses: Vec<VirtualAddr>,
    keys: Vec<AddrKey>,
    signed: Vec<Signed>,
}

/// Slice indices `js` of the slice of population members `range`.
fn derive_part(
    targets: &Targets,
    range: &Range<usize>,
    js: Range<usize>,
    plan: &Plan<'_>,
    per_member: usize,
) -> Part {
    let mut part = Part {
        addresses: Vec::with_capacity(js.len()),
        keys: Vec::with_capacity(if plan.keys { js.len() } else { 0 }),
        signed: Vec::with_capacity(if plan.sign.is_some() {
            js.len() * per_member
        } else {
            0
        }),
    };
    for j in js {
        let secret: AddrSecret = super::secret(range.start + j);
        let address = secret.address();
        part.addresses.push(address);
        if plan.keys {
            part.keys.push(secret.key());
        }
        if let Some(cookies) = plan.sign {
            let home = &cookies[j % cookies.len()];
            let owners = targets.owners(&address);
            for k in 0..per_member {
                part.signed.push(match owners.as_slice().get(k) {
                    Some(&node) => Signed {
                        cookie: home[node],
                        sig: secret.sign_register(&home[node], FLAGS),
                    },
                    None => Signed::default(),
                });
            }
        }
    }
    part
}
